"""`nefos image ...`: the images VMs are made from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from nefos.cli._common import (
    Column,
    CursorOpt,
    JsonOpt,
    LimitOpt,
    PageOpt,
    WaitOpt,
    YesOpt,
    api,
    done,
    echo_json,
    listing,
    show,
    stdout,
    wait_for,
)
from nefos.schemas.vms import ImageAccepted, ImagePublic
from nefos.sdk import Client

app = typer.Typer(no_args_is_help=True, help="Images: register, upload, list and remove them.")

ImageArg = Annotated[str, typer.Argument(help="Image id.", show_default=False)]
NameArg = Annotated[str, typer.Argument(help="The image's name.", show_default=False)]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="Project id (default: your default project).")
]
OsTypeOpt = Annotated[str, typer.Option("--os-type", help="The OS, such as ubuntu.")]
OsVersionOpt = Annotated[str, typer.Option("--os-version", help="Its version, such as 24.04.")]
ChecksumOpt = Annotated[
    str | None,
    typer.Option(help="sha256:<hex> of the disk, or of the kernel then the initrd."),
]
CmdlineOpt = Annotated[
    str | None, typer.Option("--cmdline", help="Kernel command line (with --kernel).")
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="qcow2 or raw (default: detected).")
]
MinDiskOpt = Annotated[
    int, typer.Option("--min-disk", min=0, help="Smallest root disk (GB) a VM needs.")
]
DescriptionOpt = Annotated[str, typer.Option(help="A description.")]


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


IMAGE_COLUMNS: list[Column] = [
    ("ID", "id"),
    ("NAME", "name"),
    ("KIND", "kind"),
    ("FORMAT", "format"),
    ("OS", lambda i: f"{i.os_type} {i.os_version}".strip() or "-"),
    ("STATUS", "status"),
    ("PUBLIC", "public"),
    ("SIZE", lambda i: _size(i.size_bytes)),
]


def _accepted(c: Client, accepted: ImageAccepted, wait: bool, as_json: bool) -> None:
    """Report a registration or upload: what was accepted, or (--wait) the image
    once its import ended."""
    op = accepted.operation
    if op is None:  # a container image: registered at once
        show(accepted.image, as_json)
        return
    if not wait:
        if as_json:
            echo_json(accepted)
            return
        stdout().print(
            f"{escape(accepted.message)}: {escape(accepted.image.name)} ({accepted.image_id}), "
            f"status {escape(accepted.image.status)}\n"
            f"Operation {op.id}: follow it with `nefos operation wait {op.id}`"
        )
        return
    final = wait_for(c, op.id, as_json)
    image = c.images.get(accepted.image_id)
    if as_json:
        data: dict[str, Any] = accepted.model_dump(mode="json")
        data["image"] = image.model_dump(mode="json")
        data["operation"] = final.model_dump(mode="json")
        echo_json(data)
    else:
        show(image, as_json)


@app.command("list")
def list_(
    kind: Annotated[str | None, typer.Option(help="Only vm or container images.")] = None,
    os_type: Annotated[str | None, typer.Option("--os-type", help="Only this OS.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only this status: pending, active, error, deleting.")
    ] = None,
    project: ProjectOpt = None,
    page: PageOpt = None,
    cursor: CursorOpt = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the public images and the project's own."""
    with api(as_json) as c:
        rows = c.images.list(
            kind=kind,
            os_type=os_type,
            status=status,
            project_id=project,
            page=page,
            cursor=cursor,
            limit=limit,
        )
    listing(rows, IMAGE_COLUMNS, as_json, empty="No images.")


@app.command("show")
def show_(image_id: ImageArg, as_json: JsonOpt = False) -> None:
    """Show an image: its format, source, checksum, size and status."""
    with api(as_json) as c:
        image: ImagePublic = c.images.get(image_id)
    show(image, as_json)


@app.command()
def register(
    name: NameArg,
    path: Annotated[
        str | None,
        typer.Option(
            help="On the Nefos server: a qcow2 or raw disk, or a folder holding vmlinuz, "
            "initrd.img (and cmdline)."
        ),
    ] = None,
    kernel: Annotated[
        str | None, typer.Option("--kernel", help="On the Nefos server: a kernel (not --path).")
    ] = None,
    initrd: Annotated[
        str | None, typer.Option("--initrd", help="On the Nefos server: its initrd.")
    ] = None,
    cmdline: CmdlineOpt = None,
    reference: Annotated[
        str | None,
        typer.Option(help="A container image instead, such as nginx:alpine (nothing to import)."),
    ] = None,
    fmt: FormatOpt = None,
    os_type: OsTypeOpt = "",
    os_version: OsVersionOpt = "",
    description: DescriptionOpt = "",
    checksum: ChecksumOpt = None,
    min_disk: MinDiskOpt = 0,
    public: Annotated[
        bool | None,
        typer.Option(
            "--public/--private",
            help="Visible to every project (default for a VM image) or to --project only.",
            show_default=False,
        ),
    ] = None,
    project: ProjectOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Register an image from files on the Nefos server (platform admins), or a
    container image --reference."""
    with api(as_json) as c:
        accepted = c.images.register(
            name,
            path=path,
            kernel_path=kernel,
            initrd_path=initrd,
            kernel_cmdline=cmdline,
            format=fmt,
            reference=reference,
            kind="container" if reference else "vm",
            os_type=os_type,
            os_version=os_version,
            description=description,
            checksum=checksum,
            min_disk_gb=min_disk,
            public=public,
            project_id=project,
        )
        _accepted(c, accepted, wait, as_json)


@app.command()
def upload(
    name: NameArg,
    disk: Annotated[
        Path | None,
        typer.Option(
            "--disk",
            exists=True,
            dir_okay=False,
            help="A qcow2 or raw disk file.",
            show_default=False,
        ),
    ] = None,
    kernel: Annotated[
        Path | None,
        typer.Option(
            "--kernel",
            exists=True,
            dir_okay=False,
            help="A kernel (not --disk).",
            show_default=False,
        ),
    ] = None,
    initrd: Annotated[
        Path | None,
        typer.Option(
            "--initrd", exists=True, dir_okay=False, help="Its initrd.", show_default=False
        ),
    ] = None,
    cmdline: CmdlineOpt = None,
    fmt: FormatOpt = None,
    os_type: OsTypeOpt = "",
    os_version: OsVersionOpt = "",
    description: DescriptionOpt = "",
    checksum: ChecksumOpt = None,
    min_disk: MinDiskOpt = 0,
    public: Annotated[
        bool, typer.Option("--public", help="Visible to every project (platform admins).")
    ] = False,
    project: ProjectOpt = None,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload a VM image from local files: --disk, or --kernel (with --initrd)."""
    if (disk is None) == (kernel is None):
        raise typer.BadParameter("give --disk, or --kernel (with --initrd)", param_hint="--disk")
    with api(as_json) as c:
        accepted = c.images.upload(
            name,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            kernel_cmdline=cmdline,
            format=fmt,
            os_type=os_type,
            os_version=os_version,
            description=description,
            checksum=checksum,
            min_disk_gb=min_disk,
            public=public,
            project_id=project,
        )
        _accepted(c, accepted, wait, as_json)


@app.command("rm")
def rm(
    image_id: ImageArg, yes: YesOpt = False, wait: WaitOpt = False, as_json: JsonOpt = False
) -> None:
    """Delete an image (refused while a VM or a backup uses it)."""
    if not yes:
        typer.confirm(f"Delete image {image_id}?", abort=True)
    with api(as_json) as c:
        op = c.images.delete(image_id)
        if op is None:
            done(f"Image {image_id} deleted.", as_json)
            return
        if not wait:
            if as_json:
                echo_json(
                    {
                        "message": "Image deletion accepted",
                        "image_id": image_id,
                        "operation": op.model_dump(),
                    }
                )
            else:
                stdout().print(
                    f"Image {image_id} deletion accepted: operation {op.id}\n"
                    f"Follow it with: nefos operation wait {op.id}"
                )
            return
        final = wait_for(c, op.id, as_json)
    if as_json:
        echo_json(
            {
                "message": "Image deleted",
                "image_id": image_id,
                "operation": final.model_dump(mode="json"),
            }
        )
    else:
        stdout().print(f"Image {image_id} deleted.")
