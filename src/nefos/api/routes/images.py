"""Images (seed 001): VM images registered from server paths or uploaded, and container
image references."""

from __future__ import annotations

from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import ValidationError
from starlette.responses import Response

from nefos.api.deps import (
    TEXT_PATTERN,
    Access,
    CoreDep,
    ObjectId,
    PageDep,
    ProjectHint,
    SessionDep,
    authorize,
)
from nefos.db.models import Image, Operation
from nefos.domain.access import Permission
from nefos.domain.errors import ValidationFailed
from nefos.gateway.envelope import listing, ok
from nefos.schemas.common import Envelope
from nefos.schemas.vms import ImageAccepted, ImageCreate, ImageDeleted, ImagePublic
from nefos.services.images import ImageService, image_public
from nefos.services.principal import resolve_project
from nefos.services.vms import op_ref

router = APIRouter(prefix="/images", tags=["images"])

ImageId = ObjectId


def _public(image: Image) -> ImagePublic:
    return ImagePublic.model_validate(image_public(image))


def _accepted(message: str, image: Image, op: Operation | None) -> Response:
    body: dict[str, Any] = {"message": message, "image_id": image.id, "image": _public(image)}
    if op is None:
        return ok(body, 201)
    body["operation"] = op_ref(op)
    return ok(body, 202, headers={"Location": op_ref(op)["url"]})


@router.get("", response_model=Envelope[dict[str, Any]])
async def list_images(
    core: CoreDep,
    session: SessionDep,
    params: PageDep,
    project_id: ProjectHint,
    kind: Annotated[Literal["vm", "container"] | None, Query()] = None,
    os_type: Annotated[str | None, Query(max_length=64, pattern=TEXT_PATTERN)] = None,
    status: Annotated[str | None, Query(pattern="^[a-z]{1,16}$")] = None,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    """Public images and the project's own."""
    project, _ = await resolve_project(
        session, access.principal, project_id, Permission.COMPUTE_READ
    )
    rows, total = await ImageService(core, session).list_page(
        project, params, kind=kind, os_type=os_type, status=status
    )
    items = [_public(i) for i in rows]
    return listing(items, "images", total, params)


@router.post("", status_code=202, response_model=Envelope[ImageAccepted])
async def register_image(
    body: ImageCreate,
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Register a VM image from files on the Nefos server (platform admins; 202 with
    the import operation: copy, checksum, import into each libvirt host's pool), or
    a container image `reference` (201)."""
    project, _ = await resolve_project(
        session, access.principal, body.project_id or project_id, Permission.COMPUTE_WRITE
    )
    image, op = await ImageService(core, session).register(access.principal, project, body)
    return _accepted("Image registration accepted", image, op)


@router.post("/upload", status_code=202, response_model=Envelope[ImageAccepted])
async def upload_image(
    core: CoreDep,
    session: SessionDep,
    project_id: ProjectHint,
    name: Annotated[str, Form()],
    os_type: Annotated[str, Form()] = "",
    os_version: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    format: Annotated[Literal["qcow2", "raw"] | None, Form()] = None,
    kernel_cmdline: Annotated[str | None, Form()] = None,
    checksum: Annotated[str | None, Form()] = None,
    min_disk_gb: Annotated[int, Form(ge=0, le=100_000)] = 0,
    public: Annotated[bool, Form()] = False,
    disk: Annotated[UploadFile | None, File(description="A qcow2 or raw disk.")] = None,
    kernel: Annotated[UploadFile | None, File(description="A kernel (with initrd).")] = None,
    initrd: Annotated[UploadFile | None, File()] = None,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Upload a VM image (multipart/form-data): `disk`, or `kernel` and `initrd`, plus
    the same fields as a registration. 202 with the import operation."""
    if bool(disk) == bool(kernel) or (initrd and not kernel):
        raise ValidationFailed("Send a `disk` file, or a `kernel` (and `initrd`) file")
    try:
        body = ImageCreate(
            name=name,
            os_type=os_type,
            os_version=os_version,
            description=description,
            format=format,
            kernel_cmdline=kernel_cmdline,
            checksum=checksum,
            min_disk_gb=min_disk_gb,
            public=public,
            # The files come as parts; a placeholder path satisfies the body's rules.
            path="/upload" if disk else None,
            kernel_path="/upload" if kernel else None,
        )
    except ValidationError as exc:
        raise ValidationFailed(
            "Invalid input parameters",
            **{".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()},
        ) from None
    project, _ = await resolve_project(
        session, access.principal, project_id, Permission.COMPUTE_WRITE
    )
    parts: dict[str, IO[bytes]] = {}
    for key, upload in (("disk", disk), ("kernel", kernel), ("initrd", initrd)):
        if upload is not None:
            parts[key] = upload.file
    image, op = await ImageService(core, session).upload(access.principal, project, body, parts)
    return _accepted("Image upload accepted", image, op)


@router.get("/{image_id}", response_model=Envelope[ImagePublic])
async def get_image(
    image_id: ImageId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_READ),
) -> Response:
    image = await ImageService(core, session).visible(
        access.principal, image_id, Permission.COMPUTE_READ
    )
    return ok(_public(image))


@router.delete(
    "/{image_id}",
    response_model=Envelope[ImageDeleted],
    responses={
        202: {
            "model": Envelope[ImageAccepted],
            "description": "A VM image: removed from every host's pool by `operation`",
        }
    },
)
async def delete_image(
    image_id: ImageId,
    core: CoreDep,
    session: SessionDep,
    access: Access = authorize(Permission.COMPUTE_WRITE),
) -> Response:
    """Refused (409) while a VM or a backup uses it. A VM image answers 202 with the
    operation that removes it from every host's pool and the store."""
    service = ImageService(core, session)
    image = await service.visible(access.principal, image_id, Permission.COMPUTE_WRITE)
    op = await service.delete(access.principal, image)
    if op is None:
        return ok({"message": "Image deleted", "image_id": image_id})
    await session.refresh(image)
    body = {
        "message": "Image deletion accepted",
        "image_id": image.id,
        "image": _public(image),
        "operation": op_ref(op),
    }
    return ok(body, 202, headers={"Location": op_ref(op)["url"]})
