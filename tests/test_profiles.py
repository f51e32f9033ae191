"""Profiles: names, K, class order and hub files per the spec table; overrides checked against K."""

import pytest

from sam2oct.errors import ConfigError
from sam2oct.model.profiles import PROFILES, parse_class_names, resolve_profile

# Copied from the profile table in README.md (the released checkpoints' classes), not from the code.
MGU = ("background", "RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "IS/OS", "RPE", "Choroid", "Disc")
NR206 = ("background", "NFL", "GCL+IPL", "INL", "OPL", "ONL", "ELM+IS", "OS", "RPE")
TABLE = {
    "mgu": (11, MGU, "MGU/final_runs_Glaucoma_last.pt"),
    "mgu_prompted": (11, MGU, "MGU_prompted/MGU_prompt_training_last.pt"),
    "nr206": (9, NR206, "NR206/final_runs_NR206_last.pt"),
}


def test_exactly_the_released_profiles():
    assert set(PROFILES) == set(TABLE)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_profile_matches_spec(name):
    k, classes, hub_file = TABLE[name]
    p = resolve_profile(k, name)
    assert p.name == name
    assert p.num_classes == k
    assert p.class_names == classes
    assert p.hf_filename == hub_file
    assert p.preprocess == "stretch"  # the model card's preprocessing is the default
    assert p.prompted == (name == "mgu_prompted")


@pytest.mark.parametrize("k, expected", [(11, "mgu"), (9, "nr206")])
def test_inferred_from_class_count(k, expected):
    for unset in (None, ""):
        assert resolve_profile(k, unset).name == expected


@pytest.mark.parametrize("k, name", [(9, "mgu"), (9, "mgu_prompted"), (11, "nr206"), (10, "mgu"), (2, "nr206")])
def test_class_count_contradicting_profile(k, name):
    with pytest.raises(ConfigError) as info:
        resolve_profile(k, name)
    assert str(k) in str(info.value) and name in str(info.value)
    assert info.value.option == "profile"


def test_profile_name_is_case_and_space_insensitive():
    assert resolve_profile(11, " MGU_Prompted ").name == "mgu_prompted"


@pytest.mark.parametrize("name", ["mgu2", "nr-206", "glaucoma", "default"])
def test_unknown_profile(name):
    with pytest.raises(ConfigError, match=name) as info:
        resolve_profile(9, name)
    assert info.value.option == "profile"


def test_class_name_override():
    names = ",".join(f" L{i} " for i in range(9))  # spaces around names are trimmed
    p = resolve_profile(9, "nr206", names)
    assert p.class_names == tuple(f"L{i}" for i in range(9))
    assert p.name == "nr206" and p.hf_filename == TABLE["nr206"][2]
    # The shared profile table is not modified by an override.
    assert resolve_profile(9, "nr206").class_names == NR206


def test_class_name_override_with_inferred_profile():
    names = ",".join(f"c{i}" for i in range(11))
    p = resolve_profile(11, None, names)
    assert p.name == "mgu" and p.class_names[10] == "c10"


@pytest.mark.parametrize("names", [",".join(f"c{i}" for i in range(8)), ",".join(f"c{i}" for i in range(10)),
                                   "background"])
def test_class_name_override_wrong_count(names):
    with pytest.raises(ConfigError, match="9 classes") as info:
        resolve_profile(9, "nr206", names)
    assert info.value.option == "class_names"


@pytest.mark.parametrize("names", ["a,,b,c,d,e,f,g,h", "a,b,c,d,e,f,g,h, ", " ,b,c,d,e,f,g,h,i"])
def test_class_name_override_empty_name(names):
    with pytest.raises(ConfigError, match="empty") as info:
        resolve_profile(9, None, names)
    assert info.value.option == "class_names"


def test_class_name_override_duplicates():
    with pytest.raises(ConfigError, match="repeats") as info:
        resolve_profile(9, None, "bg,a,b,c,d,e,f,g,a")
    assert info.value.option == "class_names"
    with pytest.raises(ConfigError):
        parse_class_names("x, x")


def test_custom_class_count_needs_names():
    with pytest.raises(ConfigError, match="5 classes") as info:
        resolve_profile(5)
    assert info.value.option == "class_names"
    p = resolve_profile(5, None, "bg,a,b,c,d")
    assert p.num_classes == 5 and p.class_names == ("bg", "a", "b", "c", "d")
    with pytest.raises(ConfigError):
        resolve_profile(5, None, "bg,a,b")
