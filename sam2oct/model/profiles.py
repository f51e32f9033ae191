"""The released SAM2-OCT checkpoints: class names in channel order, K, hub file, preprocessing."""

from dataclasses import dataclass, replace

from sam2oct.errors import ConfigError

HF_REPO = "enslinr/sam2-oct"

MGU_CLASSES = ("background", "RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "IS/OS", "RPE", "Choroid", "Disc")
NR206_CLASSES = ("background", "NFL", "GCL+IPL", "INL", "OPL", "ONL", "ELM+IS", "OS", "RPE")


@dataclass(frozen=True)
class Profile:
    name: str
    class_names: tuple  # channel order; index 0 is background
    hf_filename: str
    preprocess: str = "stretch"  # the model card's preprocessing (see preprocessing.py)
    prompted: bool = False  # trained with point and brush prompts

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


PROFILES = {
    "mgu": Profile("mgu", MGU_CLASSES, "MGU/final_runs_Glaucoma_last.pt"),
    "mgu_prompted": Profile("mgu_prompted", MGU_CLASSES, "MGU_prompted/MGU_prompt_training_last.pt", prompted=True),
    "nr206": Profile("nr206", NR206_CLASSES, "NR206/final_runs_NR206_last.pt"),
}

# When no profile is named, K alone decides; 11 could be either MGU file, and the unprompted
# one is the conservative reading (prompts are then not fed to the model).
_PROFILE_BY_K = {11: "mgu", 9: "nr206"}


def parse_class_names(text: str) -> tuple:
    names = tuple(n.strip() for n in text.split(","))
    if any(not n for n in names):
        raise ConfigError(f"class names: one is empty in {text!r}", option="class_names")
    if len(set(names)) != len(names):
        raise ConfigError(f"class names: {text!r} repeats a name", option="class_names")
    return names


def resolve_profile(num_classes: int, name: str | None = None, class_names: str | None = None) -> Profile:
    """Pick the profile for a checkpoint with `num_classes` channels; refuse any contradiction."""
    if name:
        key = name.strip().lower()
        if key not in PROFILES:
            raise ConfigError(f"profile {name!r} is not one of {', '.join(PROFILES)}", option="profile")
        profile = PROFILES[key]
        if profile.num_classes != num_classes:
            raise ConfigError(
                f"the checkpoint has {num_classes} classes but profile {profile.name!r} expects "
                f"{profile.num_classes}: wrong checkpoint for this profile", option="profile"
            )
    elif num_classes in _PROFILE_BY_K:
        profile = PROFILES[_PROFILE_BY_K[num_classes]]
    else:
        # A custom model: works if the user names its classes.
        if not class_names:
            raise ConfigError(
                f"the checkpoint has {num_classes} classes, which matches no released profile; "
                f"name its {num_classes} classes (comma-separated, background first)", option="class_names"
            )
        profile = Profile("custom", tuple(f"class_{i}" for i in range(num_classes)), hf_filename="")
    if class_names:
        names = parse_class_names(class_names)
        if len(names) != num_classes:
            raise ConfigError(
                f"{len(names)} class names given but the checkpoint has {num_classes} classes",
                option="class_names"
            )
        profile = replace(profile, class_names=names)
    return profile
