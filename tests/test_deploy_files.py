"""Static checks of the deployment files (no Docker, no nuctl): the four Nuclio function yamls
and their Kubernetes variants, the Dockerfile for air-gapped sites, the CVAT compose drop-in,
scripts/setup.sh and the dependency lists, the README's env table and deploy commands, and the
documents that quote them (docs/deploy.md, docs/scale-out.md).

What is checked comes from how CVAT and Nuclio read these files (listed in docs/deploy.md, "What
CVAT and Nuclio require of these files"): CVAT reads the annotations as strings and parses
booleans with bool(str); an interactor below version 2 gets a warning; a function without
spec.description breaks CVAT's whole function list; the runtime must be the Python of the base
image; Nuclio installs its own nuclio-sdk; Nuclio builds whenever spec.build.image is set, even
with --run-image; Docker honours a restart count only with on-failure.
"""

import ast
import http.server
import inspect
import io
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import tokenize
import tomllib
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sam2oct.model.profiles import PROFILES, parse_class_names
from sam2oct.serving.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
INTERACTORS = ["function.yaml", "function-gpu.yaml"]
DETECTORS = ["detector/function.yaml", "detector/function-gpu.yaml"]
FUNCTION_FILES = INTERACTORS + DETECTORS
GPU_FILES = [f for f in FUNCTION_FILES if f.endswith("-gpu.yaml")]
CPU_FILES = [f for f in FUNCTION_FILES if f not in GPU_FILES]
# (interactor, detector) built from the same recipe
TWINS = [("function.yaml", "detector/function.yaml"), ("function-gpu.yaml", "detector/function-gpu.yaml")]
# Kubernetes variants (deploy/k8s/) -> the Docker-platform file each is derived from
K8S_FILES = {"deploy/k8s/function-gpu.yaml": "function-gpu.yaml",
             "deploy/k8s/detector-gpu.yaml": "detector/function-gpu.yaml"}
K8S_ADDED = {"minReplicas", "maxReplicas", "targetCPU"}  # spec fields only the cluster files set
K8S_REPLACED = {"resources", "volumes", "platform"}  # spec fields they set differently
K8S_PVC = "deploy/k8s/models-pvc.yaml"
K8S_COPY_POD = "deploy/k8s/models-copy-pod.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERFILE_TWIN = "function-gpu.yaml"  # the yaml whose image the Dockerfile rebuilds
COMPOSE = ROOT / "docker-compose.override.yml"
SAM_PLUGIN_ID = "pth-facebookresearch-sam-vit-h"  # hijacked by CVAT's browser SAM plugin
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
BOOLEAN_FLAGS = ("startswith_box", "startswith_box_optional", "generate_without_prompting_optional")
REQUIRED_ENV = ("SAM2_CHECKPOINT", "SAM2OCT_PROFILE", "SAM2OCT_MODE", "SAM2_DEVICE")
# Where the project pins its dependencies: requirements-cpu.txt is the CPU image's extra (OpenVINO).
PIN_FILES = ("requirements.txt", "constraints.txt", "requirements-cpu.txt")
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
                        "--extra-index-url", "-f", "--find-links", "-e", "--editable"}
_PIP_FLAGS = {"--no-cache-dir", "--no-build-isolation", "--no-index", "-q", "--quiet", "--no-deps",
              "-U", "--upgrade"}


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
    for rel in PIN_FILES:
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
    assert int(ann["version"]) >= 2, "below version 2 CVAT's UI warns 'Interactor API is outdated'"
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


def restart_policy_problems(attrs: dict) -> list:
    """What is wrong with a function's Docker restart policy. Docker honours maximumRetryCount
    only with on-failure (with `always` it restarts for ever, and every start of a function
    with a bad checkpoint hashes 880 MB again), so a start that keeps failing must stop."""
    policy = attrs.get("restartPolicy") or {}
    problems = []
    if policy.get("name") != "on-failure":
        problems.append(f"restartPolicy {policy.get('name')!r}: only on-failure honours maximumRetryCount")
    count = policy.get("maximumRetryCount")
    if not (isinstance(count, int) and 1 <= count <= 5):
        problems.append(f"maximumRetryCount {count!r}: give a small positive count")
    return problems


def test_restart_policy_check_refuses_a_crash_loop():
    assert restart_policy_problems({"restartPolicy": {"name": "always", "maximumRetryCount": 3}})
    assert restart_policy_problems({"restartPolicy": {"name": "unless-stopped"}})
    assert restart_policy_problems({"restartPolicy": {"name": "on-failure"}})
    assert restart_policy_problems({})
    assert restart_policy_problems({"restartPolicy": {"name": "on-failure", "maximumRetryCount": 3}}) == []


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_platform_attributes(rel):
    attrs = load(rel)["spec"]["platform"]["attributes"]
    assert restart_policy_problems(attrs) == []
    assert attrs["mountMode"] == "volume"


@pytest.mark.docs
@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_deploy_doc_states_the_restart_policy(rel):
    # docs/deploy.md's table states the policy the files set
    attrs = load(rel)["spec"]["platform"]["attributes"]
    name = attrs["restartPolicy"]["name"]
    assert f"`restartPolicy: {name}` ({attrs['restartPolicy']['maximumRetryCount']} retries)" in \
        (ROOT / "docs/deploy.md").read_text()


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


def checkpoint_volume(rel: str) -> tuple:
    """(volume entry, mount path) of the volume that holds SAM2_CHECKPOINT."""
    cfg = load(rel)
    ckpt = PurePosixPath(env_of(cfg)["SAM2_CHECKPOINT"])
    assert ckpt.is_absolute()
    for v in cfg["spec"]["volumes"]:
        assert v["volume"]["name"] == v["volumeMount"]["name"]
        mount = PurePosixPath(v["volumeMount"]["mountPath"])
        if mount in ckpt.parents:
            return v, mount
    raise AssertionError(f"{rel}: no volume holds {ckpt}")


@pytest.mark.parametrize("rel", FUNCTION_FILES + list(K8S_FILES))
def test_checkpoint_is_mounted_not_baked(rel):
    cfg = load(rel)
    env = env_of(cfg)
    ckpt = PurePosixPath(env["SAM2_CHECKPOINT"])
    volume, mount = checkpoint_volume(rel)
    if rel in K8S_FILES:  # a claim every node can mount, the one deploy/k8s/models-pvc.yaml makes
        claim = volume["volume"]["persistentVolumeClaim"]
        assert claim["claimName"] == load(K8S_PVC)["metadata"]["name"]
        assert claim.get("readOnly") is True
    else:
        host = volume["volume"]["hostPath"]["path"]
        assert PurePosixPath(host).is_absolute(), "Docker bind-mounts need an absolute host path"
    assert volume["volumeMount"].get("readOnly") is True
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
            assert PurePosixPath(path).name in PIN_FILES
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


@pytest.mark.parametrize("rel", FUNCTION_FILES + ["Dockerfile"])
def test_openvino_in_the_cpu_image_only(rel):
    """The CPU images install requirements-cpu.txt (OpenVINO), after requirements.txt and under the
    constraints and requirements.txt's pins, so nothing already installed changes; the GPU
    images and the Dockerfile (the GPU image's) never name OpenVINO."""
    commands = dockerfile_runs() if rel == "Dockerfile" else run_lines(load(rel))
    installs = [i for c in commands for i in pip_installs(c)]
    cpu_extra = [i for i, (o, _, _) in enumerate(installs)
                 if any(PurePosixPath(r).name == "requirements-cpu.txt" for r in o.get("-r", []))]
    text = "\n".join(commands)
    if rel in CPU_FILES:
        assert len(cpu_extra) == 1, f"{rel}: installs requirements-cpu.txt {len(cpu_extra)} times"
        options = installs[cpu_extra[0]][0]
        assert {PurePosixPath(c).name for c in options.get("-c", [])} >= {"constraints.txt", "requirements.txt"}
        r_index = next(i for i, (o, _, _) in enumerate(installs)
                       if any(PurePosixPath(r).name == "requirements.txt" for r in o.get("-r", [])))
        assert r_index < cpu_extra[0]
    else:
        assert not cpu_extra and "openvino" not in text.lower() and "requirements-cpu" not in text, rel


def test_requirements_cpu_pins_openvino():
    pins = {canonicalize_name(r.name): r for r in requirement_lines("requirements-cpu.txt")}
    assert set(pins) == {"openvino"}
    (spec,) = pins["openvino"].specifier
    assert spec.operator == "=="
    # no overlap with requirements.txt (one pin per package) and in the development set-up
    assert not set(pins) & {canonicalize_name(r.name) for r in requirement_lines("requirements.txt")}
    dev = (ROOT / "requirements-dev.txt").read_text().split()
    assert "requirements-cpu.txt" in dev
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (line,) = extras["cpu"]
    req = Requirement(line)
    assert canonicalize_name(req.name) == "openvino" and req.specifier.contains(spec.version)
    assert any(s.operator == "<" for s in req.specifier), f"{req} has no upper bound"


@pytest.mark.parametrize("rel", FUNCTION_FILES)
def test_runtime_and_conversion_cache(rel):
    """The CPU functions run the encoder through OpenVINO with its conversion cache on a host
    folder (writable, not the models' read-only one), so a restart or redeploy loads the
    converted model instead of converting again; the GPU functions stay with torch."""
    cfg = load(rel)
    env = env_of(cfg)
    if rel in GPU_FILES:
        assert env.get("SAM2OCT_RUNTIME", "auto") in ("auto", "torch")
        assert "SAM2OCT_OV_CACHE_DIR" not in env
        return
    assert env["SAM2OCT_RUNTIME"] == "openvino"
    cache = PurePosixPath(env["SAM2OCT_OV_CACHE_DIR"])
    assert cache.is_absolute()
    holders = [v for v in cfg["spec"]["volumes"] if PurePosixPath(v["volumeMount"]["mountPath"]) in
               (cache, *cache.parents) and v["volumeMount"]["mountPath"] != "/"]
    assert len(holders) == 1, f"{rel}: no volume (or several) holds {cache}"
    (volume,) = holders
    assert not volume["volumeMount"].get("readOnly"), "the function writes the conversion cache"
    assert PurePosixPath(volume["volume"]["hostPath"]["path"]).is_absolute()
    _, models = checkpoint_volume(rel)
    assert models not in (cache, *cache.parents), "the cache must not be in the read-only models folder"


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


@pytest.mark.docs
def test_readme_documents_every_env_var():
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.lstrip().startswith("|")]
    missing = [name for name in ENV_VARS if not any(re.search(rf"(?<![\w]){name}(?![\w])", r) for r in rows)]
    assert not missing, f"README.md has no table row for {missing}"


# --- shell scripts and documented commands ----------------------------------------------------

SETUP = ROOT / "scripts/setup.sh"


def shell_commands(text: str) -> list:
    """The commands of a shell script or block: continuation lines joined; comment lines, blank
    lines and here-document bodies dropped."""
    out, buf, heredoc = [], "", None
    for raw in text.splitlines():
        if heredoc:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        m = re.search(r"<<-?\s*['\"]?(\w+)", line)
        if m:
            heredoc = m.group(1)
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((buf + line).strip())
        buf = ""
    return out


def simple_commands(text: str) -> list:
    """Every simple command of a shell block as an argv list, in order: `&&`, `|` and a subshell's
    parentheses split away, end-of-line comments and a trailing `&` dropped."""
    argvs = []
    for command in shell_commands(text):
        command = command.strip()
        if command.startswith("(") and command.endswith(")"):
            command = command[1:-1]
        for part in re.split(r"&&|\|", command):
            argv = shlex.split(part, comments=True)
            if argv and argv[-1] == "&":
                argv = argv[:-1]
            if argv:
                argvs.append(argv)
    return argvs


def heredoc_bodies(text: str) -> list:
    return re.findall(r"<<'EOF'\n(.*?)\nEOF(?:\n|$)", text, re.S)


def fenced_blocks(text: str, lang: str = "bash") -> list:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def markdown_section(rel: str, title: str) -> str:
    text = (ROOT / rel).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def setup_installs() -> list:
    return [i for c in shell_commands(SETUP.read_text()) for i in pip_installs(c)]


def setup_torch_index() -> str:
    m = re.search(r"^TORCH_INDEX=\$\{SETUP_TORCH_INDEX-([^}]+)\}$", SETUP.read_text(), re.M)
    assert m, "scripts/setup.sh: TORCH_INDEX=${SETUP_TORCH_INDEX-<url>} not found"
    return m.group(1)


def requirement_lines(rel: str) -> list:
    reqs = []
    for line in (ROOT / rel).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


# --- set-up: torch, torchvision, cvat-cli -----------------------------------------------------

def test_torch_and_torchvision_pins_are_a_pair():
    # torchvision 0.(N+15) is the release built for torch 2.N (the compatibility table in
    # torchvision's README: 2.0/0.15, 2.1/0.16, ..., 2.8/0.23); another pair fails on import.
    pins = project_pins()
    torch, vision = Version(pins["torch"]), Version(pins["torchvision"])
    assert (torch.major, vision.major) == (2, 0) and vision.minor == torch.minor + 15, (torch, vision)


def test_setup_installs_the_cpu_pair_or_falls_back_to_torch_alone():
    pins = project_pins()
    assert setup_torch_index() == CPU_TORCH_INDEX
    torch_installs = [(o, s) for o, s, _ in setup_installs() if any(norm(x.split("==")[0]) == "torch" for x in s)]
    primary = [(o, s) for o, s in torch_installs if "--index-url" in o]
    fallback = [(o, s) for o, s in torch_installs if "--index-url" not in o]
    assert len(primary) == 1 and len(fallback) == 1, torch_installs
    (p_opts, p_specs), (f_opts, f_specs) = primary[0], fallback[0]
    # the pair, both from PyTorch's CPU index (the default index serves CUDA builds on Linux)
    assert p_opts["--index-url"] == ["$TORCH_INDEX"]
    assert sorted(p_specs) == [f"torch=={pins['torch']}", f"torchvision=={pins['torchvision']}"]
    # the fallback: torch alone, from whatever index pip is configured with
    assert f_specs == [f"torch=={pins['torch']}"] and "--extra-index-url" not in f_opts
    for opts in (p_opts, f_opts):
        assert opts.get("-c") == ["constraints.txt"]


def test_setup_takes_the_path_the_probe_decides_and_says_which():
    text = SETUP.read_text()
    branch = text[text.index("if torch_index_reachable; then"):]
    branch = branch[:branch.index("\nfi\n")]
    then, sep, orelse = branch.partition("\nelse\n")
    assert sep, "scripts/setup.sh: no fallback branch"
    assert "--index-url" in then and "torchvision==" in then
    assert "--index-url" not in orelse and "torchvision" not in orelse
    for part in (then, orelse):  # each path announces itself
        assert re.search(r'^\s*echo "set-up: ', part, re.M), part
    # the pair is checked to work together before the set-up goes on
    assert any("import torch, torchvision" in body for body in heredoc_bodies(then))
    # the fallback comes before sam2 and the requirements, which would otherwise pull torch
    order = [" ".join(s) for _, s, _ in setup_installs()]
    assert order.index(f"torch=={project_pins()['torch']}") < order.index(f"sam2=={setup_sh_pin('sam2')}")


def torch_index_probe() -> str:
    text = SETUP.read_text()
    function = text[text.index("torch_index_reachable() {"):]
    function = function[:function.index("\n}\n")]
    assert '"$TORCH_INDEX"' in function, "the probe must look at the index the set-up installs from"
    (body,) = heredoc_bodies(function)
    return body


def test_setup_probe_is_quick():
    # a machine without access must fall back at once, not wait out pip's timeouts and retries
    timeouts = [int(t) for t in re.findall(r"timeout=(\d+)", torch_index_probe())]
    assert timeouts and max(timeouts) <= 10


class _Index(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def run_probe(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-", url], input=torch_index_probe(), text=True,
                          capture_output=True, timeout=60)


def test_setup_probe_accepts_a_reachable_index_and_refuses_a_dead_one(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html><body></body></html>")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: _Index(*a, directory=str(tmp_path), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ok = run_probe(f"http://127.0.0.1:{server.server_address[1]}/")
        assert ok.returncode == 0, ok.stderr
        missing = run_probe(f"http://127.0.0.1:{server.server_address[1]}/nothing-here")
        assert missing.returncode == 1 and "not reachable" in missing.stderr
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = run_probe(f"http://127.0.0.1:{dead_port}/")
    assert dead.returncode == 1 and "not reachable" in dead.stderr


def test_setup_installs_this_package_without_dependencies():
    editable = [o for o, _, _ in setup_installs() if o.get("-e")]
    assert editable and editable[-1]["-e"] == ["."] and editable[-1].get("--no-deps") is True


def test_cvat_cli_is_a_pinned_dev_dependency_kept_out_of_the_images():
    dev = {canonicalize_name(r.name): r for r in requirement_lines("requirements-dev.txt")}
    for name in ("cvat-sdk", "cvat-cli"):
        assert name in dev, f"requirements-dev.txt lacks {name}"
        (spec,) = dev[name].specifier
        assert spec.operator == "==", f"{name} must be pinned"
    assert "masks" in dev["cvat-sdk"].extras
    # cvat-cli requires the cvat-sdk of its own version
    assert str(dev["cvat-sdk"].specifier) == str(dev["cvat-cli"].specifier)
    runtime = {canonicalize_name(r.name) for r in requirement_lines("requirements.txt")}
    assert not runtime & {"cvat-sdk", "cvat-cli"}
    # the Nuclio images install requirements.txt only
    for rel in FUNCTION_FILES + list(K8S_FILES) + ["Dockerfile"]:
        text = (ROOT / rel).read_text()
        assert "requirements-dev" not in text and not re.search(r"\bcvat[-_](sdk|cli)\b", text), rel


def test_cvat_cli_runs_from_the_environment():
    (pin,) = {canonicalize_name(r.name): r for r in requirement_lines("requirements-dev.txt")}["cvat-cli"].specifier
    exe = Path(sys.executable).with_name("cvat-cli")
    assert exe.is_file(), f"no cvat-cli beside {sys.executable}: run bash scripts/setup.sh"
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == pin.version


def test_pyproject_dependencies_agree_with_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {}
    for line in project["dependencies"]:
        req = Requirement(line)
        assert canonicalize_name(req.name) not in deps, f"{req.name} listed twice"
        deps[canonicalize_name(req.name)] = req
    pinned = {canonicalize_name(r.name): r for r in requirement_lines("requirements.txt")}
    assert set(deps) == set(pinned) | {"torch", "sam2"}, set(deps) ^ (set(pinned) | {"torch", "sam2"})
    for name, req in pinned.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"requirements.txt must pin {name}"
        assert deps[name].specifier.contains(spec.version), f"pyproject's {deps[name]} refuses {name}=={spec.version}"
        assert deps[name].extras == req.extras
    assert deps["torch"].specifier.contains(project_pins()["torch"])
    assert deps["sam2"].specifier.contains(setup_sh_pin("sam2"))
    for name, req in deps.items():  # ranges, not open-ended: a new major may break the loader
        assert any(s.operator in ("<", "==") for s in req.specifier), f"{req} has no upper bound"


# --- the README -------------------------------------------------------------------------------

def _bash_syntax_ok(block: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True, timeout=60)


@pytest.mark.docs
@pytest.mark.parametrize("rel", ["README.md", "docs/deploy.md", "docs/scale-out.md"])
def test_documented_shell_blocks_parse(rel):
    blocks = fenced_blocks((ROOT / rel).read_text())
    assert blocks
    for block in blocks:
        done = _bash_syntax_ok(block)
        assert done.returncode == 0, f"{rel}: {done.stderr}\n{block}"


def _index(argvs, predicate, what):
    hits = [i for i, argv in enumerate(argvs) if predicate(argv)]
    assert hits, f"the deploy block has no {what}"
    return hits[0]


@pytest.mark.docs
def test_readme_deploy_block_works_as_pasted():
    from sam2oct.cli import build_parser

    (block,) = fenced_blocks(markdown_section("README.md", "Deploy beside CVAT with nuctl"))
    argvs = simple_commands(block)
    # Python runs from the set-up's environment, never whichever python is on PATH
    assert not [a for a in argvs if a[0] in ("python", "python3")]
    dl = _index(argvs, lambda a: a[:4] == [".venv/bin/python", "-m", "sam2oct", "download"], "download")
    args = build_parser().parse_args(argvs[dl][3:])

    # the deploy: from an export of the repository, after the checkpoint is in place
    deploy = _index(argvs, lambda a: a[:2] == ["nuctl", "deploy"], "nuctl deploy")
    opts = dict(zip(argvs[deploy][2::2], argvs[deploy][3::2]))
    rel = opts["--file"]
    assert rel in FUNCTION_FILES and opts["--path"] == "." and opts["--platform"] == "local"
    env = env_of(load(rel))
    assert env["SAM2OCT_PROFILE"] == args.profile, "the yaml must name the checkpoint downloaded"
    volume, mount = checkpoint_volume(rel)
    host = PurePosixPath(volume["volume"]["hostPath"]["path"])

    # the copy puts what the download wrote where the yaml mounts it from
    cp = _index(argvs, lambda a: "cp" in a[:2], "copy of the checkpoint")
    sources = [x for x in argvs[cp][argvs[cp].index("cp") + 1:-1] if not x.startswith("-")]
    assert sources == [f"{args.models_dir}/{args.profile}", f"{args.models_dir}/checksums.json"]
    assert PurePosixPath(argvs[cp][-1]) == host
    ckpt = PurePosixPath(env["SAM2_CHECKPOINT"])
    assert ckpt.parent.relative_to(mount) == PurePosixPath(args.profile)
    mkdir = _index(argvs, lambda a: "mkdir" in a[:2] and str(host) in a, f"mkdir of {host}")
    assert dl < cp and mkdir < cp < deploy

    # the export is made in the repository, before changing into it
    archive = _index(argvs, lambda a: a[:2] == ["git", "archive"], "git archive")
    tar = argvs[archive + 1]
    assert tar[0] == "tar" and "-x" in tar, "git archive must be piped into tar -x"
    export = tar[tar.index("-C") + 1]
    cd = _index(argvs, lambda a: a == ["cd", export], f"cd {export}")
    assert archive < cd < deploy
    assert _index(argvs, lambda a: a[:3] == ["mkdir", "-p", export], f"mkdir -p {export}") < archive
    project = _index(argvs, lambda a: a[:3] == ["nuctl", "create", "project"], "nuctl create project")
    assert project < deploy and argvs[project][3] == opts["--project-name"]

    # CVAT's compose files from CVAT's checkout, plus this repository's drop-in from the export
    compose = _index(argvs, lambda a: a[:2] == ["docker", "compose"], "docker compose")
    assert argvs[compose - 1][0] == "cd", "docker compose must run in CVAT's checkout"
    var = re.fullmatch(r"\$\{?(\w+)\}?", argvs[compose - 1][1]).group(1)
    assert _index(argvs, lambda a: a[0].startswith(f"{var}="), f"{var}=...") < compose
    files = [argvs[compose][i + 1] for i, x in enumerate(argvs[compose]) if x == "-f"]
    ours = [f for f in files if f.startswith(export + "/")]
    assert ours and all((ROOT / f[len(export) + 1:]).is_file() for f in ours)
    assert argvs[compose][-2:] == ["up", "-d"]


@pytest.mark.docs
def test_readme_says_what_stock_cvat_does_first():
    section = markdown_section("README.md", "Using it in CVAT")
    first = section.split("\n\n")[1]
    assert first.startswith("**Stock CVAT") and "one mask" in first and "label" in first
    # The README says stock CVAT's UI sends no box: true only while no interactor asks for one.
    assert "no box" in section and "no brush" in section
    for rel in INTERACTORS + [k for k, src in K8S_FILES.items() if src in INTERACTORS]:
        ann = load(rel)["metadata"]["annotations"]
        assert not {"startswith_box", "startswith_box_optional"} & set(ann), \
            f"{rel} asks CVAT for a box: update the README's 'Using it in CVAT'"
    # boxes and brushes come after, as what only the fork or a direct call sends
    assert section.index("no box") < section.index("obj_bbox") and section.index("no brush") < section.index("`brush`")
    # the help CVAT shows beside the tool promises nothing stock CVAT cannot send
    for rel in INTERACTORS:
        assert "box" not in load(rel)["metadata"]["annotations"]["help_message"]


# --- Kubernetes variants ----------------------------------------------------------------------

@pytest.mark.parametrize("rel", list(K8S_FILES))
def test_k8s_files_are_derived_from_the_gpu_files(rel):
    cfg, src = load(rel), load(K8S_FILES[rel])
    assert cfg["metadata"] == src["metadata"]
    keep = lambda spec: {k: v for k, v in spec.items() if k not in K8S_ADDED | K8S_REPLACED}
    assert keep(cfg["spec"]) == keep(src["spec"]), "only replicas, resources and volumes may differ"
    # the files for Docker stay as they were: no replicas, the Docker-only platform attributes
    assert not K8S_ADDED & set(src["spec"])
    assert "platform" not in cfg["spec"], "platform.attributes apply to Docker only"


@pytest.mark.parametrize("rel", list(K8S_FILES))
def test_k8s_replicas_and_one_gpu_each(rel):
    spec = load(rel)["spec"]
    lo, hi = spec["minReplicas"], spec["maxReplicas"]
    assert isinstance(lo, int) and isinstance(hi, int) and 1 <= lo < hi, (lo, hi)
    assert 1 <= int(spec["targetCPU"]) <= 100
    # the autoscaler measures CPU use against the request: without one it cannot scale
    assert str(spec["resources"]["requests"]["cpu"]).strip()
    assert str(spec["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert int(http_trigger(load(rel))["maxWorkers"]) == 1, "one worker, one model per GPU"


def test_k8s_models_claim_and_copy_pod_agree():
    pvc, pod = load(K8S_PVC), load(K8S_COPY_POD)
    assert pvc["kind"] == "PersistentVolumeClaim" and pod["kind"] == "Pod"
    # replicas on several nodes mount it at once; the copy pod writes it
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]]
    assert claims == [pvc["metadata"]["name"]]
    assert pvc["metadata"]["namespace"] == pod["metadata"]["namespace"]
    for rel in K8S_FILES:
        assert load(rel)["metadata"]["namespace"] == pvc["metadata"]["namespace"]
    (container,) = pod["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    # the copy pod mounts the claim where the functions do, so `kubectl cp` paths match
    assert PurePosixPath(mount["mountPath"]) == checkpoint_volume(next(iter(K8S_FILES)))[1]
    assert not mount.get("readOnly")


# --- docs/scale-out.md ------------------------------------------------------------------------

SCALE_OUT = ROOT / "docs/scale-out.md"


def cvat_cli_commands() -> list:
    argvs = [a for block in fenced_blocks(SCALE_OUT.read_text()) for a in simple_commands(block)]
    out = []
    for argv in argvs:
        tools = [i for i, tok in enumerate(argv) if PurePosixPath(tok).name == "cvat-cli"]
        if tools:
            out.append(argv[tools[0] + 1:])
    return out


@pytest.mark.docs
def test_scale_out_cvat_cli_commands_parse():
    from cvat_cli._internal.commands_all import COMMANDS
    from cvat_cli._internal.common import configure_common_arguments

    commands = cvat_cli_commands()
    seen = set()
    for argv in commands:
        parser = __import__("argparse").ArgumentParser()
        configure_common_arguments(parser)
        COMMANDS.configure_parser(parser)
        try:
            parsed = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"cvat-cli refuses: {' '.join(argv)}")
        seen.add(tuple(argv[i] for i in range(len(argv)) if argv[i] in ("create-native", "run-agent")))
        assert parsed.function_module == "sam2oct.cvat_function"
    assert {("create-native",), ("run-agent",)} <= seen


@pytest.mark.docs
def test_scale_out_k8s_commands_name_the_k8s_files():
    argvs = [a for block in fenced_blocks(SCALE_OUT.read_text()) for a in simple_commands(block)]
    deployed = set()
    for argv in argvs:
        if argv[:2] == ["nuctl", "deploy"]:
            opts = dict(zip(argv[2::2], argv[3::2]))
            assert opts["--platform"] == "kube" and opts["--path"] == "."
            deployed.add(opts["--file"])
        if argv[:1] == ["kubectl"] and "-f" in argv:
            for i, tok in enumerate(argv):
                if tok == "-f":
                    assert (ROOT / argv[i + 1]).is_file(), argv[i + 1]
    assert deployed == set(K8S_FILES)


@pytest.mark.docs
def test_scale_out_parameters_are_those_of_the_cvat_function():
    module = pytest.importorskip("sam2oct.cvat_function", reason="sam2oct.cvat_function has not landed")
    parameters = inspect.signature(module.create).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for argv in cvat_cli_commands():
        for i, tok in enumerate(argv):
            if tok in ("-p", "--function-parameter"):
                name = argv[i + 1].split("=", 1)[0]
                assert open_ended or name in parameters, f"sam2oct.cvat_function.create takes no {name!r}"


def _printed_lines() -> set:
    lines = set()
    for rel in ("docs/benchmarks.md", "docs/polygons.md"):
        lines |= {line.strip() for line in (ROOT / rel).read_text().splitlines()}
    return lines


@pytest.mark.docs
def test_scale_out_quotes_benchmark_figures_as_printed():
    section = markdown_section("docs/scale-out.md", "3. What one replica serves: an estimate")
    assert "GPU figures are not measured here" in " ".join(section.split())
    (block,) = re.findall(r"```\n(.*?)```", section, re.S)
    printed = _printed_lines()
    for line in block.splitlines():
        line = line.strip()
        text = line[2:] if line.startswith("$ ") else line
        assert line in printed or text in printed, f"not printed by a benchmark in docs/: {line!r}"


def _figure(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, pattern
    return float(m.group(1))


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


@pytest.mark.docs
def test_scale_out_estimate_is_computed_from_those_figures():
    section = markdown_section("docs/scale-out.md", "3. What one replica serves: an estimate")
    (block,) = re.findall(r"```\n(.*?)```", section, re.S)
    E = _figure(r"E = ([\d.]+) s", section)
    D = _figure(r"D = ([\d.]+) s", section)
    P = _figure(r"P = ([\d.]+) s", section)
    assert E == _figure(r"encode, cold \(first call\): ([\d.]+) s", block)
    assert D == _figure(r"auto \(first decode after encode\)\s+([\d.]+) s", block)
    assert P == _figure(r"median ([\d.]+) ms", block) / 1000

    # one request at a time: rate = 1 / seconds
    rows = re.findall(r"^\| [^|]*: ([EDP +]+) \| ([\d.]+) \| ([\d.]+)", section, re.M)
    assert len(rows) == 3
    for expression, seconds, rate in rows:
        value = sum({"E": E, "D": D, "P": P}[term.strip()] for term in expression.split("+"))
        assert round(value, _decimals(seconds)) == float(seconds), expression
        assert round(1 / value, _decimals(rate)) == float(rate), expression

    # R copies, c clicks per frame, each copy hit encodes the frame once
    c = int(_figure(r"For c = (\d+)", section))
    table = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", section, re.M)
    assert [int(r[0]) for r in table] == [1, 2, 4, 8]
    for R, encoding, work, frames, clicks in table:
        R = int(R)
        d = R * (1 - (1 - 1 / R) ** c)
        w = E * d + c * D
        for written, value in ((encoding, d), (work, w), (frames, R / w), (clicks, c * R / w)):
            assert round(value, _decimals(written)) == float(written), (R, written, value)


# --- tests cite only what is in the repository ------------------------------------------------

# Documents and source files that a docstring or comment may cite; data files (checkpoints,
# payloads, configs) named there are often made up by the test itself, so they are not checked.
_CITED = re.compile(r"[\w./+-]*\w\.(?:md|rst|py|sh|toml|txt|ts|tsx|js)\b")
_OUTSIDE = re.compile(r"https?://|(^|[\s(`'\"])(\.\./|~/|/work/|/home/|/tmp/|shared/)")


def docs_and_comments(path: Path):
    """(line, text) of every comment and docstring of a Python file."""
    source = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc


@lru_cache(maxsize=None)
def _repo_file_names() -> frozenset:
    names = set()
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if path.is_file() and not {".venv", ".git", "__pycache__"} & set(parts):
            names.add(path.name)
    return frozenset(names)


def citation_problems(text: str) -> list:
    problems = [f"points outside the repository: {m.group(0).strip()!r}" for m in _OUTSIDE.finditer(text)]
    for m in _CITED.finditer(text):
        cited = m.group(0)
        found = (ROOT / cited).is_file() or (ROOT / "tests" / cited).is_file() if "/" in cited \
            else cited in _repo_file_names()
        if not found:
            problems.append(f"cites {cited!r}, which is not in the repository")
    return problems


@pytest.mark.docs
def test_citation_check_catches_outside_references():
    assert citation_problems("see ../shared/spec/cvat-nuclio.md")
    assert citation_problems("facts from shared/spec/cvat-nuclio.md")
    assert citation_problems("the table in the model spec (semantic-sam2.md)")
    assert citation_problems("as CVAT's cvat/apps/lambda_manager/views.py does")
    assert citation_problems("https://github.com/cvat-ai/cvat/blob/develop/README.md")
    assert citation_problems("/work/main/tests/conftest.py")
    assert citation_problems("see docs/deploy.md and tests/harness.py") == []
    assert citation_problems("conftest.py, scripts/setup.sh, requirements.txt") == []


@pytest.mark.docs
@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name)
def test_tests_cite_only_files_in_the_repository(path):
    problems = [f"{path.name}:{line}: {p}" for line, text in docs_and_comments(path)
                for p in citation_problems(text)]
    assert not problems, "\n".join(problems)
