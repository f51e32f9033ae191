"""cvat-task's server path: one CVAT task per volume bundle, made through cvat-sdk.

The connection flags are cvat-cli's (--server-host, --server-port, --auth USER[:PASS] with the
PASS environment variable or a prompt, CVAT_ACCESS_TOKEN for a personal access token, --insecure,
--organization/--org), and the login is cvat-sdk's own (``make_client_from_cli``), so a saved
default cvat-cli profile is used as cvat-cli would. cvat-cli's --profile is not offered: here
--profile is the model profile. cvat-sdk is a development dependency (requirements-dev.txt);
without it this path ends in one error that says what to install.
"""

from __future__ import annotations

import json
from pathlib import Path

from sam2oct.data.cvat_bundle import ANNOTATION_FORMAT, ANNOTATIONS_XML, VOLUME_JSON, labels_spec
from sam2oct.errors import ConfigError

SERVER_FLAGS = {"server_host": "--server-host", "server_port": "--server-port", "auth": "--auth",
                "project_id": "--project-id", "organization": "--organization"}
DATA_PARAMS = {"image_quality": 100, "sorting_method": "predefined"}


def add_server_flags(parser) -> None:
    group = parser.add_argument_group("CVAT server (as cvat-cli: the same flags and CVAT_ACCESS_TOKEN, PASS)")
    group.add_argument("--server-host", metavar="HOST", help="create the tasks on this CVAT server "
                       "(default with --auth or --project-id: cvat-cli's default profile, else http://localhost)")
    group.add_argument("--server-port", type=int, metavar="PORT", help="its port (default: 80 for http, 443 for https)")
    group.add_argument("--auth", metavar="USER[:PASS]", help="user and password (PASS from the environment or a "
                       "prompt when left out); without it, the token in CVAT_ACCESS_TOKEN")
    group.add_argument("--insecure", action="store_true", help="do not check the server's SSL certificate")
    group.add_argument("--organization", "--org", metavar="SLUG", help="organization to create the tasks in")
    group.add_argument("--project-id", "--project_id", dest="project_id", type=int, metavar="N",
                       help="create the tasks in this project (its labels must hold every layer); "
                            "default: tasks with the profile's layers as labels")


def wants_server(args) -> bool:
    return any(getattr(args, k) is not None for k in ("server_host", "server_port", "auth", "project_id",
                                                      "organization"))


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def connect(args):
    """A logged-in cvat-sdk client, or a ConfigError naming what failed."""
    try:
        from cvat_sdk.core.auth import ClientAuthParameters, get_auth_factory, make_client_from_cli
    except ImportError:
        raise ConfigError("creating CVAT tasks needs cvat-sdk, which is not installed: pip install cvat-sdk "
                          "(or use --out alone and `cvat-cli task create`)", option="server_host") from None
    params = ClientAuthParameters(
        auth=get_auth_factory(args.auth) if args.auth else None, server_host=args.server_host,
        server_port=args.server_port, insecure=args.insecure, organization=args.organization)
    try:
        return make_client_from_cli(params)
    except Exception as exc:  # connection refused, 401, bad certificate, a broken auth store, ...
        where = args.server_host or "the default server"
        raise ConfigError(f"cannot log in to CVAT at {where}: {_first_line(exc)}", option="server_host") from None


def task_fields(client, project_id, layer_names) -> dict:
    """The task's label source: the project (which must hold every layer) or the layers themselves."""
    if project_id is None:
        from sam2oct.cli.overlay import PALETTE_HEX

        return {"labels": labels_spec(["background", *layer_names], PALETTE_HEX)}
    try:
        project = client.projects.retrieve(project_id)
        have = {label.name for label in project.get_labels()}
    except Exception as exc:
        raise ConfigError(f"project {project_id} cannot be read: {_first_line(exc)}", option="project_id") from None
    missing = [n for n in layer_names if n not in have]
    if missing:
        raise ConfigError(f"project {project_id} lacks the labels {', '.join(missing)} (it has: "
                          f"{', '.join(sorted(have)) or 'none'}); add them, or leave out --project-id", option="project_id")
    return {"project_id": project_id}


def create_task(client, bundle: Path, fields: dict) -> str:
    """Create the task from a bundle (frames in order, image quality 100, sorting predefined),
    import its annotations, and return the task's URL. A failure deletes the task it made."""
    from cvat_sdk.api_client import models
    from cvat_sdk.core.proxies.tasks import ResourceType

    meta = json.loads((bundle / VOLUME_JSON).read_text())
    spec = models.TaskWriteRequest(name=bundle.name, **fields)
    repo = client.tasks
    created, create = [], repo.create

    def remember(*args, **kwargs):  # the task create_from_data makes, to delete it if a later step fails
        task = create(*args, **kwargs)
        created.append(task)
        return task

    repo.create = remember
    try:
        task = repo.create_from_data(
            spec, resources=[str(bundle / f) for f in meta["frames"]], resource_type=ResourceType.LOCAL,
            data_params=dict(DATA_PARAMS), annotation_path=str(bundle / ANNOTATIONS_XML),
            annotation_format=ANNOTATION_FORMAT)
    except Exception as exc:
        removed = _remove(created)
        raise ConfigError(f"{bundle.name}: creating the CVAT task failed ({_first_line(exc)}); {removed}; "
                          f"the bundle {bundle} is kept", option="server_host") from None
    finally:
        del repo.create  # the repository's own method again
    return f"{client.api_map.host}/tasks/{task.id}"


def _remove(created) -> str:
    if not created:
        return "no task was created"
    notes = []
    for task in created:
        try:
            task.remove()
            notes.append(f"task {task.id} was deleted")
        except Exception as exc:
            notes.append(f"task {task.id} could not be deleted ({_first_line(exc)}): delete it by hand")
    return "; ".join(notes)
