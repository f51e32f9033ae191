"""Static checks of the deployment files (no Docker, no nuctl): the four Nuclio function yamls,
the Dockerfile for air-gapped sites, the CVAT compose drop-in, and the README's env table.

What is checked comes from how CVAT and Nuclio read these files (docs in shared/spec/cvat-nuclio.md):
CVAT reads the annotations as strings and parses booleans with bool(str); interactors need
version 2; a function without spec.description breaks CVAT's whole function list; the runtime must
be the Python of the base image; Nuclio installs its own nuclio-sdk; Nuclio builds whenever
spec.build.image is set, even with --run-image.
"""

import json
import re
import shlex
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

from sam2oct.profiles import PROFILES, parse_class_names
from sam2oct.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
INTERACTORS = ["function.yaml", "function-gpu.yaml"]
DETECTORS = ["detector/function.yaml", "detector/function-gpu.yaml"]
FUNCTION_FILES = INTERACTORS + DETECTORS
GPU_FILES = [f for f in FUNCTION_FILES if f.endswith("-gpu.yaml")]
CPU_FILES = [f for f in FUNCTION_FILES if f not in GPU_FILES]
# (interactor, detector) built from the same recipe
TWINS = [("function.yaml", "detector/function.yaml"), ("function-gpu.yaml", "detector/function-gpu.yaml")]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERFILE_TWIN = "function-gpu.yaml"  # the yaml whose image the Dockerfile rebuilds
COMPOSE = ROOT / "docker-compose.override.yml"
SAM_PLUGIN_ID = "pth-facebookresearch-sam-vit-h"  # hijacked by CVAT's browser SAM plugin
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
BOOLEAN_FLAGS = ("startswith_box", "startswith_box_optional", "generate_without_prompting_optional")
REQUIRED_ENV = ("SAM2_CHECKPOINT", "SAM2OCT_PROFILE", "SAM2OCT_MODE", "SAM2_DEVICE")
# Nuclio's own offline install of its SDK (what its builder runs; only the Dockerfile, which
# replaces that builder, may do it, and only from the wheels in Nuclio's image)
NUCLIO_WHEELS = "/opt/nuclio/whl"
NUCLIO_WHEEL_PACKAGES = {"pip", "nuclio-sdk", "msgpack"}


@lru_cache(maxsize=None)
def load(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


def env_of(cfg) -> dict:
    entries = cfg["spec"].get("env") or []
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"an env name is set twice: {names}"
    return {e["name"]: str(e["value"]) for e in entries}


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration).strip())
    assert m, f"not a Go duration Nuclio accepts: {duration!r}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def directives(cfg) -> list:
    d = cfg["spec"]["build"].get("directives") or {}
    assert set(d) <= {"preCopy", "postCopy"}, f"unknown directive groups: {set(d)}"
    return [(group, item) for group in ("preCopy", "postCopy") for item in d.get(group) or []]


def run_lines(cfg) -> list:
    return [item["value"] for _, item in directives(cfg) if item["kind"] == "RUN"]


def http_trigger(cfg) -> dict:
    return cfg["spec"]["triggers"]["myHttpTrigger"]


def python_of_base_image(rel: str, base_image: str) -> str:
    """The base image's Python: from an official python:X.Y tag, and from the `# python: X.Y`
    marker on the baseImage line; both must agree when both exist, one must exist."""
    line = next(l for l in (ROOT / rel).read_text().splitlines() if re.match(r"\s*baseImage:", l))
    marker = re.search(r"#\s*python:\s*(\d+\.\d+)\b", line)
    tag = re.fullmatch(r"(?:docker\.io/(?:library/)?)?python:(\d+\.\d+)(?:[.\-][\w.\-]*)?", base_image)
    assert marker or tag, f"{rel}: cannot tell the Python of {base_image}; add '# python: 3.X' on its line"
    if marker and tag:
        assert marker.group(1) == tag.group(1), f"{rel}: marker says {marker.group(1)}, tag {base_image}"
    return (marker or tag).group(1)


def expected_detector_labels(env) -> list:
    profile = PROFILES[env["SAM2OCT_PROFILE"]]
    names = parse_class_names(env["SAM2OCT_CLASS_NAMES"]) if env.get("SAM2OCT_CLASS_NAMES") else profile.class_names
    if env.get("SAM2OCT_LABEL_STYLE", "names").strip().lower() == "index":
        return [f"OCT_Object_{k}" for k in range(1, len(names))]
    return list(names[1:])


# --- pip commands -----------------------------------------------------------------------------

_PIP_OPTS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url",
                        "--extra-index-url", "-f", "--find-links"}
_PIP_FLAGS = {"--no-cache-dir", "--no-build-isolation", "--no-index", "-q", "--quiet"}


def pip_installs(command: str) -> list:
    """Every `pip install` in a shell command, as (options, requirement specs, env prefix)."""
    found = []
    for part in re.split(r"&&|;|\|\|", command):
        tokens = shlex.split(part)
        for i in range(len(tokens) - 1):
            if tokens[i].endswith("pip") and tokens[i + 1] == "install":
                prefix = [t for t in tokens[:i] if re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", t)]
                options, specs, rest = {}, [], iter(tokens[i + 2:])
                for tok in rest:
                    if tok in _PIP_OPTS_WITH_VALUE:
                        options.setdefault(tok, []).append(next(rest))
                    elif tok in _PIP_FLAGS:
                        options[tok] = True
                    else:
                        assert not tok.startswith("-"), f"unexpected pip option {tok!r} in: {command}"
                        specs.append(tok)
                found.append((options, specs, prefix))
                break
    return found


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=None)
def project_pins() -> dict:
    pins = {}
    for rel in ("requirements.txt", "constraints.txt"):
        for line in (ROOT / rel).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            if m:
                assert pins.setdefault(norm(m.group(1)), m.group(2)) == m.group(2), f"{m.group(1)} pinned twice"
    return pins


def setup_sh_pin(package: str) -> str:
    m = re.search(rf"\b{re.escape(package)}==([0-9][^\s\"']*)", (ROOT / "scripts/setup.sh").read_text())
    assert m, f"scripts/setup.sh pins no {package}"
    return m.group(1)


# --- Dockerfile -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def dockerfile_instructions() -> tuple:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    return tuple(out)


def dockerfile_final_base() -> str:
    args = {}
    froms = []
    for instr, rest in dockerfile_instructions():
        if instr == "ARG" and not froms:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif instr == "FROM":
            froms.append(rest.split()[0])
    image = froms[-1]
    for _ in range(5):  # ARG defaults may refer to earlier ARGs
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
    return image


def dockerfile_final_stage() -> list:
    instrs = list(dockerfile_instructions())
    last_from = max(i for i, (instr, _) in enumerate(instrs) if instr == "FROM")
    return instrs[last_from + 1:]


def dockerfile_env() -> dict:
    env = {}
    for instr, rest in dockerfile_instructions():
        if instr == "ENV":
            for tok in shlex.split(rest):
                name, eq, value = tok.partition("=")
                assert eq, f"use ENV NAME=value, not {rest!r}"
                env[name] = value
    return env


def dockerfile_runs() -> list:
    return [rest for instr, rest in dockerfile_final_stage() if instr == "RUN"]


def is_nuclio_sdk_install(options) -> bool:
    return options.get("--no-index") is True and options.get("--find-links") == [NUCLIO_WHEELS]


# --- the tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", FUNCTION_FILES + ["docker-compose.override.yml"])
def test_yaml_parses(rel):
    assert isinstance(load(rel), dict)


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_annotations(rel):
    meta = load(rel)["metadata"]
    ann = meta["annotations"]
    for key in ("name", "type", "version", "framework", "spec", "help_message"):
        assert key in ann, f"{rel}: annotation {key} missing"
    for key, value in ann.items():
        assert isinstance(value, str), f"{rel}: annotation {key} is {type(value).__name__}; CVAT reads strings"
    assert ann["framework"] == "pytorch"
    assert int(ann["version"]) >= 2, "interactors need version 2 or CVAT's UI disables them"
    assert ann["help_message"].strip()
    for flag in BOOLEAN_FLAGS:  # bool("false") is True in CVAT: a flag is off only when absent
        if flag in ann:
            assert ann[flag] == "true", f"{rel}: {flag}={ann[flag]!r}; leave the flag out to turn it off"
    expected_type = "detector" if rel in DETECTORS else "interactor"
    assert ann["type"] == expected_type
    if expected_type == "interactor":
        assert ann["name"] == "SAM2-OCT", "the CVAT-OCT fork's UI special-cases this display name"
    else:
        assert ann["name"].startswith("SAM2-OCT") and ann["name"] != "SAM2-OCT"


@pytest.mark.parametrize("rel", INTERACTORS)
def test_interactor_spec_and_prompts(rel):
    ann = load(rel)["metadata"]["annotations"]
    assert json.loads(ann["spec"]) == []
    assert ann["min_pos_points"] == "0", "with no click the function returns the whole retina"
    assert int(ann.get("min_neg_points", "0")) >= 0
    assert env_of(load(rel))["SAM2OCT_MODE"] == "interactor"


@pytest.mark.parametrize("rel", DETECTORS)
def test_detector_spec_matches_profile(rel):
    cfg = load(rel)
    env = env_of(cfg)
    assert env["SAM2OCT_MODE"] == "detector"
    assert env["SAM2OCT_PROFILE"] in PROFILES, "the detector's label list needs an explicit profile"
    spec = json.loads(cfg["metadata"]["annotations"]["spec"])
    assert isinstance(spec, list) and all(isinstance(item, dict) for item in spec)
    assert [item["name"] for item in spec] == expected_detector_labels(env)
    assert len({item["id"] for item in spec}) == len(spec)
    assert all(item["type"] == "mask" for item in spec)


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_function_spec(rel):
    spec = load(rel)["spec"]
    assert str(spec.get("description", "")).strip(), "without spec.description CVAT's function list fails"
    assert spec["handler"] == "main:handler"
    assert (ROOT / "main.py").is_file()
    assert re.fullmatch(r"python:3\.\d+", spec["runtime"])
    timeout = seconds(spec["eventTimeout"])
    # a cold request: image encoder on 2 CPU cores ~8 s; generous on either device
    assert timeout >= (60 if rel in GPU_FILES else 120)
    assert int(spec["readinessTimeoutSeconds"]) >= 120


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_runtime_is_base_image_python(rel):
    spec = load(rel)["spec"]
    version = python_of_base_image(rel, spec["build"]["baseImage"])
    assert spec["runtime"] == f"python:{version}"
    assert tuple(map(int, version.split("."))) >= (3, 9), "Nuclio 1.14.1+ dropped Python 3.8"


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_http_trigger(rel):
    trig = http_trigger(load(rel))
    assert trig["kind"] == "http"
    assert int(trig["maxWorkers"]) >= 1
    assert int(trig["workerAvailabilityTimeoutMilliseconds"]) >= 30000
    body = int(trig["attributes"]["maxRequestBodySize"])
    assert body >= 32 << 20
    if "SAM2OCT_MAX_IMAGE_BYTES" in ENV_VARS:
        # the largest image file the function accepts must fit, base64-encoded, in a request
        max_bytes = int(env_of(load(rel)).get("SAM2OCT_MAX_IMAGE_BYTES", ENV_VARS["SAM2OCT_MAX_IMAGE_BYTES"][0]))
        assert body >= 4 * -(-max_bytes // 3) + 64 * 1024


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_platform_attributes(rel):
    attrs = load(rel)["spec"]["platform"]["attributes"]
    assert attrs["restartPolicy"] == {"name": "always", "maximumRetryCount": 3}
    assert attrs["mountMode"] == "volume"


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_gpu_limit(rel):
    limits = (load(rel)["spec"].get("resources") or {}).get("limits") or {}
    if rel in GPU_FILES:
        assert str(limits.get("nvidia.com/gpu")) == "1"
    else:
        assert "nvidia.com/gpu" not in limits


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_env(rel):
    cfg = load(rel)
    env = env_of(cfg)
    unknown = set(env) - set(ENV_VARS)
    assert not unknown, f"{rel}: env names the code never reads: {unknown}"
    for _, item in directives(cfg):
        if item["kind"] == "ENV":
            name = re.split(r"[=\s]", item["value"].strip(), maxsplit=1)[0]
            assert name in ENV_VARS, f"{rel}: ENV directive sets {name}, which the code never reads"
    for name in REQUIRED_ENV:
        assert env.get(name), f"{rel}: {name} must be set explicitly"
    assert env["SAM2_DEVICE"] == ("cuda" if rel in GPU_FILES else "cpu")
    assert env["SAM2OCT_PROFILE"] in PROFILES


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_checkpoint_is_mounted_not_baked(rel):
    cfg = load(rel)
    env = env_of(cfg)
    ckpt = PurePosixPath(env["SAM2_CHECKPOINT"])
    assert ckpt.is_absolute()
    mounts = []
    for v in cfg["spec"]["volumes"]:
        assert v["volume"]["name"] == v["volumeMount"]["name"]
        host = v["volume"].get("hostPath", {}).get("path")
        if host:
            assert PurePosixPath(host).is_absolute(), "Docker bind-mounts need an absolute host path"
            mounts.append((PurePosixPath(v["volumeMount"]["mountPath"]), v["volumeMount"]))
    holding = [(m, vm) for m, vm in mounts if m == ckpt.parent or m in ckpt.parents]
    assert holding, f"{rel}: no hostPath volume holds {ckpt}"
    mount, vm = holding[0]
    assert vm.get("readOnly") is True
    # the layout `python -m sam2oct download` writes: <models>/<profile>/<file name on the hub>
    profile = PROFILES[env["SAM2OCT_PROFILE"]]
    assert ckpt.relative_to(mount) == PurePosixPath(profile.name, PurePosixPath(profile.hf_filename).name)
    assert not str(mount).startswith("/opt/nuclio"), "keep the checkpoint apart from the code"


def test_metadata_names_unique():
    names = [load(rel)["metadata"]["name"] for rel in FUNCTION_FILES]
    assert len(set(names)) == len(names), names
    for name in names:
        assert name != SAM_PLUGIN_ID
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name


@pytest.mark.parametrize("rel", FUNCTION_FILES + ["Dockerfile"])
def test_no_nuclio_sdk_install(rel):
    """Nuclio installs its own nuclio-sdk; only the Dockerfile, which stands in for Nuclio's
    builder, installs it, the way the builder does: offline, from the wheels in Nuclio's image."""
    commands = dockerfile_runs() if rel == "Dockerfile" else run_lines(load(rel))
    for command in commands:
        for options, specs, _ in pip_installs(command):
            names = {norm(re.split(r"[=<>!~\[ ]", s)[0]) for s in specs}
            if "nuclio-sdk" not in names:
                continue
            assert rel == "Dockerfile" and is_nuclio_sdk_install(options), f"{rel}: installs nuclio-sdk: {command}"
            assert names <= NUCLIO_WHEEL_PACKAGES and "--index-url" not in options


@pytest.mark.parametrize("rel", FUNCTION_FILES + ["Dockerfile"])
def test_dependencies_pinned(rel):
    commands = dockerfile_runs() if rel == "Dockerfile" else run_lines(load(rel))
    installs = [i for c in commands for i in pip_installs(c)]
    assert installs
    pins = project_pins()
    for options, specs, _ in installs:
        if is_nuclio_sdk_install(options):
            continue
        for spec in specs:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][^\s;,]*)", spec)
            assert m, f"{rel}: {spec!r} is not pinned with =="
            name, version = norm(m.group(1)), m.group(2)
            if name in pins:
                assert version == pins[name], f"{rel}: {name}=={version}, the project pins {pins[name]}"
        for path in options.get("-r", []) + options.get("-c", []):
            assert PurePosixPath(path).name in ("requirements.txt", "constraints.txt")
            assert (ROOT / PurePosixPath(path).name).is_file()


@pytest.mark.parametrize("rel", FUNCTION_FILES + ["Dockerfile"])
def test_install_recipe(rel):
    """torch first (CPU wheels in the CPU image), sam2 without its CUDA extension under the
    constraints, then requirements.txt: as scripts/setup.sh does it."""
    commands = dockerfile_runs() if rel == "Dockerfile" else run_lines(load(rel))
    installs = [i for c in commands for i in pip_installs(c)]
    by_package = {}
    for index, (options, specs, prefix) in enumerate(installs):
        for spec in specs:
            by_package[norm(spec.split("==")[0])] = (index, options, prefix)
    gpu = rel == "Dockerfile" or rel in GPU_FILES

    t_index, t_options, _ = by_package["torch"]
    assert "torchvision" in by_package
    if gpu:
        assert CPU_TORCH_INDEX not in t_options.get("--index-url", []), "the GPU image needs CUDA torch"
    else:
        assert t_options.get("--index-url") == [CPU_TORCH_INDEX]

    s_index, s_options, s_prefix = by_package["sam2"]
    assert f"sam2=={setup_sh_pin('sam2')}" in installs[s_index][1]
    assert "SAM2_BUILD_CUDA=0" in s_prefix
    assert s_options.get("--no-build-isolation") is True
    assert any(PurePosixPath(c).name == "constraints.txt" for c in s_options.get("-c", []))
    assert t_index < s_index
    assert "setuptools" in by_package and by_package["setuptools"][0] < s_index

    r_index = next(i for i, (o, _, _) in enumerate(installs) if o.get("-r"))
    assert PurePosixPath(installs[r_index][0]["-r"][0]).name == "requirements.txt"
    assert any(PurePosixPath(c).name == "constraints.txt" for c in installs[r_index][0].get("-c", []))
    assert s_index < r_index


@pytest.mark.parametrize("interactor, detector", TWINS)
def test_interactor_and_detector_share_the_image_recipe(interactor, detector):
    a, b = dict(load(interactor)["spec"]["build"]), dict(load(detector)["spec"]["build"])
    a.pop("image", None), b.pop("image", None)
    assert a == b
    ea, eb = env_of(load(interactor)), env_of(load(detector))
    assert {k: v for k, v in ea.items() if k != "SAM2OCT_MODE"} == {k: v for k, v in eb.items() if k != "SAM2OCT_MODE"}
    for key in ("runtime", "handler", "resources", "volumes", "platform"):
        assert load(interactor)["spec"].get(key) == load(detector)["spec"].get(key), key


@pytest.mark.parametrize("rel", GPU_FILES)
def test_gpu_files_leave_build_image_unset(rel):
    """With spec.build.image set, Nuclio builds even under `nuctl deploy --run-image`."""
    assert "image" not in load(rel)["spec"]["build"]


def test_dockerfile_base_image_is_function_gpu_base_image():
    assert dockerfile_final_base() == load(DOCKERFILE_TWIN)["spec"]["build"]["baseImage"]


def test_dockerfile_env_is_function_gpu_env():
    env = dockerfile_env()
    assert set(env) <= set(ENV_VARS), f"Dockerfile ENV the code never reads: {set(env) - set(ENV_VARS)}"
    assert env == env_of(load(DOCKERFILE_TWIN))


def test_dockerfile_runs_the_function_gpu_install_steps():
    runs = [r for r in dockerfile_runs()
            if not any(is_nuclio_sdk_install(o) for o, _, _ in pip_installs(r))]
    assert runs == run_lines(load(DOCKERFILE_TWIN))


def test_dockerfile_is_a_nuclio_python_function_image():
    final = dockerfile_final_stage()
    copies = [rest for instr, rest in final if instr == "COPY"]
    assert any(c.endswith("/usr/local/bin/processor") and "--from=" in c for c in copies), "no processor binary"
    assert any(re.search(r"/home/nuclio/bin/py\s+/opt/nuclio/?$", c) for c in copies), "no Nuclio Python wrapper"
    version = load(DOCKERFILE_TWIN)["spec"]["runtime"].split(":")[1]
    assert any(f"/home/nuclio/bin/py{version}-whl" in c for c in copies), "no nuclio-sdk wheels for the runtime"
    code = " ".join(c for c in copies if "--from=" not in c)
    for needed in ("main.py", "model_handler.py", "requirements.txt", "constraints.txt", "sam2oct"):
        assert re.search(rf"(^|\s){re.escape(needed)}(\s|$)", code), f"the image lacks {needed}"
        assert (ROOT / needed).exists()
    assert all(c.split()[-1].startswith("/opt/nuclio") for c in copies if "--from=" not in c)
    assert not re.search(r"(^|\s)(\.|models\S*)\s", code), "copy the code only, never models/ or the whole tree"
    assert any(instr == "HEALTHCHECK" and "8082/ready" in rest for instr, rest in final)
    cmd = [rest for instr, rest in final if instr == "CMD"]
    assert cmd and json.loads(cmd[-1])[0] == "processor"


def test_compose_override_timeout():
    services = load("docker-compose.override.yml")["services"]
    # the slowest answer: waiting for a free worker, then a request running to eventTimeout
    needed = max(
        seconds(load(rel)["spec"]["eventTimeout"])
        + int(http_trigger(load(rel))["workerAvailabilityTimeoutMilliseconds"]) / 1000
        for rel in FUNCTION_FILES
    )
    # cvat_server calls interactors; cvat_worker_annotation runs detectors (automatic annotation)
    for service in ("cvat_server", "cvat_worker_annotation"):
        env = services[service]["environment"]
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        assert int(env["CVAT_NUCLIO_DEFAULT_TIMEOUT"]) >= needed, service
    assert set(services) == {"cvat_server", "cvat_worker_annotation"}, "a drop-in must not define new services"


def test_readme_documents_every_env_var():
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.lstrip().startswith("|")]
    missing = [name for name in ENV_VARS if not any(re.search(rf"(?<![\w]){name}(?![\w])", r) for r in rows)]
    assert not missing, f"README.md has no table row for {missing}"
