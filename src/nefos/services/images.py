"""Images: what VMs boot (seed 001 ``/images``), and container image references.

A VM image is registered from files on the Nefos server (platform admins: a
qcow2/raw disk, or a kernel + initrd + command line) or uploaded by a project.
Registering answers 202 with an ``image.import`` operation, which copies the files
into the image store (``<image_dir>/<id>/``) while computing their SHA-256, checks
the checksum the caller gave, refuses a qcow2 with a backing file (it could name
any file on the host), and imports the image into the storage pool of every
libvirt host that answers, as volumes ``nefos-img-<id>.*``. A host that was
offline, or registered later, gets the image when the first VM there needs it
(:func:`ensure_on_host`). An image a VM or a backup uses is not deleted.

Container images are references (``nginx:alpine``); hosts pull them on first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from nefos.db.models import Backup, Host, Image, Operation, Project, Vm
from nefos.db.session import begin_write
from nefos.db.types import new_id
from nefos.domain.access import Permission
from nefos.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from nefos.domain.paging import PageParams
from nefos.drivers.libvirt.domain import KERNEL_HEADER_BYTES, kernel_min_memory_mb
from nefos.operations import OpContext, enqueue
from nefos.schemas.vms import ImageCreate
from nefos.services.core import Core
from nefos.services.drivers import VM_DRIVERS, supported_driver
from nefos.services.hosts import ACTIVE, driver_call
from nefos.services.paging import fetch_page
from nefos.services.principal import Principal, authorize_project

log = logging.getLogger("nefos.images")

QCOW2_MAGIC = b"QFI\xfb"
_CHUNK = 1024 * 1024
_GIB = 1024**3

#: Store file names of each part of an image.
STORE_NAMES = {
    "kernel": "vmlinuz",
    "initrd": "initrd.img",
    "qcow2": "disk.qcow2",
    "raw": "disk.raw",
}


def pool_image_name(image_id: str) -> str:
    """The name of an image's volumes in a libvirt pool (``<name>.vmlinuz``, ...)."""
    return f"nefos-img-{image_id}"


def store_dir(core: Core, image_id: str) -> Path:
    return core.settings.resolved_image_dir / image_id


def qcow2_header(head: bytes) -> tuple[int, bool] | None:
    """(virtual size in bytes, has a backing file) of a qcow2 header; None if not qcow2."""
    if len(head) < 32 or head[:4] != QCOW2_MAGIC:
        return None
    backing_offset, _backing_size = struct.unpack(">QI", head[8:20])
    (size,) = struct.unpack(">Q", head[24:32])
    return size, backing_offset != 0


def _copy_hashing(src: IO[bytes], dest: Path, digest: Any, limit: int) -> int:
    """Copy ``src`` to ``dest`` (0600), feeding ``digest``; the bytes copied."""
    total = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        dest.chmod(0o600)
        while chunk := src.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise ValidationFailed(
                    f"The image is larger than the limit of {limit} bytes", size=f"> {limit}"
                )
            digest.update(chunk)
            out.write(chunk)
    return total


def _store_upload(
    parts: dict[str, IO[bytes]], target: Path, wanted: str | None, limit: int
) -> tuple[str, dict[str, str]]:
    """Write an upload's parts into the store folder; (format, {part: stored path})."""
    if "disk" in parts:
        disk = parts["disk"]
        header = qcow2_header(disk.read(32))
        disk.seek(0)
        fmt = wanted or ("qcow2" if header else "raw")
        if fmt == "qcow2" and header is None:
            raise ValidationFailed("The file is not a qcow2 image", format="qcow2")
        dest = target / STORE_NAMES[fmt]
        _copy_hashing(disk, dest, hashlib.sha256(), limit)
        return fmt, {fmt: str(dest)}
    files: dict[str, str] = {}
    for part in ("kernel", "initrd"):
        if part in parts:
            dest = target / STORE_NAMES[part]
            _copy_hashing(parts[part], dest, hashlib.sha256(), limit)
            files[part] = str(dest)
    return "kernel", files


def _readable_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_absolute():
        raise ValidationFailed(f"{what} must be an absolute path", **{what: path})
    if not p.is_file():
        raise ValidationFailed(f"{what}: no such file on the Nefos server", **{what: path})
    return p


def source_files(body: ImageCreate) -> tuple[str, dict[str, str], str | None]:
    """(format, {part: server path}, kernel command line) of a path registration."""
    if body.kernel_path:
        files = {"kernel": str(_readable_file(body.kernel_path, "kernel_path"))}
        if body.initrd_path:
            files["initrd"] = str(_readable_file(body.initrd_path, "initrd_path"))
        return "kernel", files, body.kernel_cmdline
    assert body.path is not None
    p = Path(body.path)
    if not p.is_absolute():
        raise ValidationFailed("path must be an absolute path", path=body.path)
    if p.is_dir():
        kernel = p / "vmlinuz"
        if not kernel.is_file():
            raise ValidationFailed(
                "A directory image holds vmlinuz (and initrd.img, cmdline)", path=body.path
            )
        files = {"kernel": str(kernel)}
        if (p / "initrd.img").is_file():
            files["initrd"] = str(p / "initrd.img")
        cmdline = body.kernel_cmdline
        if cmdline is None and (p / "cmdline").is_file():
            cmdline = (p / "cmdline").read_text().strip()[:1000] or None
        return "kernel", files, cmdline
    disk = _readable_file(body.path, "path")
    with disk.open("rb") as f:
        header = qcow2_header(f.read(32))
    fmt = body.format or ("qcow2" if header else "raw")
    if fmt == "qcow2" and header is None:
        raise ValidationFailed("The file is not a qcow2 image", format="qcow2")
    return fmt, {fmt: str(disk)}, None


def image_public(image: Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "name": image.name,
        "kind": image.kind,
        "format": image.format,
        "os_type": image.os_type,
        "os_version": image.os_version,
        "description": image.description,
        "project_id": image.project_id,
        "public": image.project_id is None,
        "source": image.source,
        "kernel_cmdline": image.kernel_cmdline,
        "checksum": image.checksum,
        "size_bytes": image.size_bytes,
        "min_disk_gb": image.min_disk_gb,
        "min_memory_mb": image.min_memory_mb,
        "status": image.status,
        "status_reason": image.status_reason,
        "created_at": image.created_at,
        "updated_at": image.updated_at,
    }


def label(image: Image) -> str:
    """An image as its users know it: its OS and version, else its name (never the
    pool's ``nefos-img-<id>`` volume names)."""
    return " ".join(p for p in (image.os_type, image.os_version) if p) or image.name


def stored_min_memory_mb(folder: Path) -> int | None:
    """The least memory (MiB) a kernel image in the store boots in: what its kernel
    needs to decompress (from the setup header) plus its initrd, which the guest
    holds in memory. None when unknown (not an x86 bzImage)."""
    kernel = folder / STORE_NAMES["kernel"]
    if not kernel.is_file():
        return None
    with kernel.open("rb") as f:
        floor = kernel_min_memory_mb(f.read(KERNEL_HEADER_BYTES))
    initrd = folder / STORE_NAMES["initrd"]
    if floor is not None and initrd.is_file():
        floor += -(-initrd.stat().st_size // (1024 * 1024))
    return floor


def min_memory_mb(core: Core, image: Image) -> int | None:
    """The image's memory floor: as recorded at import, or (an image imported before
    the floor was recorded) read from the image store."""
    if image.min_memory_mb is not None or image.format != "kernel":
        return image.min_memory_mb
    return stored_min_memory_mb(store_dir(core, image.id))


class ImageService:
    def __init__(self, core: Core, session: AsyncSession) -> None:
        self.core = core
        self.session = session

    # --- reading ----------------------------------------------------------------------
    async def list_page(
        self,
        project: Project,
        page: PageParams,
        *,
        kind: str | None = None,
        os_type: str | None = None,
        status: str | None = None,
    ) -> tuple[Sequence[Image], int]:
        where: list[Any] = [or_(Image.project_id.is_(None), Image.project_id == project.id)]
        if kind:
            where.append(Image.kind == kind)
        if os_type:
            where.append(func.lower(Image.os_type) == os_type.lower())
        if status:
            where.append(Image.status == status)
        return await fetch_page(
            self.session, Image, *where, order_by=(Image.created_at, Image.id), page=page
        )

    async def visible(self, principal: Principal, image_id: str, permission: Permission) -> Image:
        """The image if the caller may see it (a public one, or one of a project the
        caller may act in); any other is NotFound. Writing a public image takes a
        platform admin."""
        image = await self.session.get(Image, image_id)
        if image is None:
            raise NotFound("Image not found", image_id=image_id)
        if image.project_id is None:
            principal.require_scope(permission)
            if permission is Permission.COMPUTE_WRITE and not principal.is_admin:
                raise Forbidden("Public images are managed by platform admins")
            return image
        try:
            await authorize_project(self.session, principal, image.project_id, permission)
        except NotFound:
            raise NotFound("Image not found", image_id=image_id) from None
        return image

    async def for_vm(
        self, project_id: str, *, image_id: str | None, os_type: str, os_version: str
    ) -> Image:
        """The VM image a create names, or the newest active one matching the OS."""
        visible = or_(Image.project_id.is_(None), Image.project_id == project_id)
        if image_id:
            image = await self.session.scalar(select(Image).where(Image.id == image_id, visible))
            if image is None:
                raise ValidationFailed("No such image", image_id=image_id)
        else:
            query = select(Image).where(
                visible,
                Image.kind == "vm",
                Image.status == "active",
                func.lower(Image.os_type) == os_type.lower(),
            )
            if os_version:
                query = query.where(Image.os_version == os_version)
            image = await self.session.scalar(
                query.order_by(Image.created_at.desc(), Image.id).limit(1)
            )
            if image is None:
                wanted = f"{os_type} {os_version}".strip()
                raise ValidationFailed(
                    f"No image for {wanted}: register one (POST /images) or name an image_id",
                    os_type=wanted,
                )
        if image.kind != "vm":
            raise ValidationFailed("That is a container image, not a VM image", image_id=image.id)
        if image.status != "active":
            raise ValidationFailed(
                f"The image is {image.status}, not active", image_id=image.id, status=image.status
            )
        return image

    # --- writing ----------------------------------------------------------------------
    async def register(
        self, principal: Principal, project: Project, body: ImageCreate
    ) -> tuple[Image, Operation | None]:
        public = body.public
        if body.kind == "container":
            if public and not principal.is_admin:
                raise Forbidden("Only platform admins register public images")
            image = Image(
                project_id=None if public else project.id,
                user_id=principal.user_id,
                name=body.name,
                kind="container",
                format="docker",
                os_type=body.os_type,
                os_version=body.os_version,
                description=body.description,
                source=body.reference or "",
                checksum=body.checksum,
                status="active",
            )
            await begin_write(self.session)
            self.session.add(image)
            await self.session.commit()
            return image, None
        if not principal.is_admin:
            # A path names a file on the Nefos server: only its operators may read those.
            raise Forbidden(
                "Registering an image from a server path takes a platform admin; "
                "upload it instead (POST /images/upload)"
            )
        fmt, files, cmdline = source_files(body)
        return await self._create_vm_image(
            principal,
            project_id=None if public is None or public else project.id,
            body=body,
            fmt=fmt,
            files=files,
            cmdline=cmdline,
            source=body.path or body.kernel_path or "",
        )

    async def upload(
        self,
        principal: Principal,
        project: Project,
        body: ImageCreate,
        parts: dict[str, IO[bytes]],
    ) -> tuple[Image, Operation]:
        """An image sent in the request: ``parts`` holds ``disk``, or ``kernel`` (and
        ``initrd``). The bytes go to the store now; the import runs as an operation."""
        if body.public and not principal.is_admin:
            raise Forbidden("Only platform admins register public images")
        limit = self.core.settings.image_upload_max_bytes
        image = Image(
            project_id=None if body.public else project.id,
            user_id=principal.user_id,
            name=body.name,
            kind="vm",
            format="pending",
            os_type=body.os_type,
            os_version=body.os_version,
            description=body.description,
            source="upload",
            kernel_cmdline=body.kernel_cmdline,
            min_disk_gb=body.min_disk_gb,
            status="pending",
        )
        image.id = new_id()  # the store folder is named after it
        target = store_dir(self.core, image.id)
        try:
            # Gigabytes may come: the copy runs off the event loop.
            fmt, files = await asyncio.to_thread(_store_upload, parts, target, body.format, limit)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        image.format = fmt
        image, op = await self._enqueue_import(image, files, body.checksum, principal)
        return image, op

    async def _create_vm_image(
        self,
        principal: Principal,
        *,
        project_id: str | None,
        body: ImageCreate,
        fmt: str,
        files: dict[str, str],
        cmdline: str | None,
        source: str,
    ) -> tuple[Image, Operation]:
        image = Image(
            project_id=project_id,
            user_id=principal.user_id,
            name=body.name,
            kind="vm",
            format=fmt,
            os_type=body.os_type,
            os_version=body.os_version,
            description=body.description,
            source=source,
            kernel_cmdline=cmdline,
            min_disk_gb=body.min_disk_gb,
            status="pending",
        )
        return await self._enqueue_import(image, files, body.checksum, principal)

    async def _enqueue_import(
        self, image: Image, files: dict[str, str], checksum: str | None, principal: Principal
    ) -> tuple[Image, Operation]:
        await begin_write(self.session)
        try:
            self.session.add(image)
            await self.session.flush()
            op = await enqueue(
                self.session,
                kind="image.import",
                resource_type="image",
                resource_id=image.id,
                project_id=image.project_id,
                user_id=principal.user_id,
                params={"files": files, "checksum": checksum},
            )
            await self.session.commit()
        except BaseException:
            if self.session.in_transaction():
                await self.session.rollback()
            raise
        self.core.workers.notify()
        return image, op

    async def delete(self, principal: Principal, image: Image) -> Operation | None:
        """Refused while a VM or a backup uses the image; a container reference goes
        at once (None), a VM image through an ``image.delete`` operation."""
        await begin_write(self.session)
        try:
            current = await self.session.get(Image, image.id, populate_existing=True)
            if current is None:
                raise NotFound("Image not found", image_id=image.id)
            for model, what in ((Vm, "virtual machine"), (Backup, "backup")):
                n = await self.session.scalar(
                    select(func.count(model.id)).where(model.image_id == current.id)
                )
                if n:
                    raise Conflict(
                        f"The image is in use by {n} {what}(s)", in_use=n, image_id=current.id
                    )
            if current.kind != "vm":
                await self.session.delete(current)
                await self.session.commit()
                return None
            op = await enqueue(
                self.session,
                kind="image.delete",
                resource_type="image",
                resource_id=current.id,
                project_id=current.project_id,
                user_id=principal.user_id,
                params={"from_status": current.status},
            )
            current.status = "deleting"
            await self.session.commit()
        except BaseException:
            if self.session.in_transaction():
                await self.session.rollback()
            raise
        self.core.workers.notify()
        return op


# --- the operations ----------------------------------------------------------------------
async def ensure_on_host(core: Core, host: Host, image: Image) -> None:
    """Make sure ``host``'s pool holds ``image`` (import it from the store if not)."""
    driver: Any = core.drivers.for_host(host)
    name = pool_image_name(image.id)
    if await driver_call(core, host, driver.has_image(name)):
        return
    folder = store_dir(core, image.id)
    parts: dict[str, Any] = {}
    if image.format == "kernel":
        parts["kernel"] = folder / STORE_NAMES["kernel"]
        if (folder / STORE_NAMES["initrd"]).is_file():
            parts["initrd"] = folder / STORE_NAMES["initrd"]
    else:
        parts["disk"] = folder / STORE_NAMES[image.format]
        parts["disk_format"] = image.format
    missing = [str(p) for p in parts.values() if isinstance(p, Path) and not p.is_file()]
    if missing:
        raise ValidationFailed(
            "The image's files are missing from the image store", missing=", ".join(missing)
        )
    await driver_call(core, host, driver.import_image(name, **parts))


def _store_and_hash(files: dict[str, str], folder: Path, limit: int) -> dict[str, dict[str, Any]]:
    """Copy each part into the store (unless it is there already), hashing it."""
    out: dict[str, dict[str, Any]] = {}
    for part, path in files.items():
        src = Path(path)
        if not src.is_file():
            raise ValidationFailed("No such file on the Nefos server", path=path)
        dest = folder / STORE_NAMES[part]
        digest = hashlib.sha256()
        if src.resolve() == dest.resolve():
            size = 0
            with src.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        else:
            with src.open("rb") as f:
                size = _copy_hashing(f, dest, digest, limit)
        out[part] = {"sha256": digest.hexdigest(), "size": size}
    return out


def _content_checksum(fmt: str, folder: Path) -> str:
    """SHA-256 of the disk, or of the kernel then the initrd concatenated."""
    digest = hashlib.sha256()
    parts = ["kernel", "initrd"] if fmt == "kernel" else [fmt]
    for part in parts:
        path = folder / STORE_NAMES[part]
        if path.is_file():
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()


class ImageOps:
    def __init__(self, core: Core) -> None:
        self.core = core

    def register(self) -> None:
        w = self.core.workers
        w.register("image.import", self.run_import, self.import_failed, self.cancel_import)
        w.register("image.delete", self.run_delete, self.delete_failed, self.cancel_delete)

    async def run_import(self, ctx: OpContext) -> dict[str, Any] | None:
        async with self.core.db.sessionmaker() as session:
            image = await session.get(Image, ctx.op.resource_id)
            hosts = (
                await session.scalars(
                    select(Host).where(Host.driver.in_(VM_DRIVERS), Host.status == ACTIVE)
                )
            ).all()
        if image is None:
            return {"skipped": "image no longer exists"}
        folder = store_dir(self.core, image.id)
        files: dict[str, str] = ctx.op.params.get("files", {})
        parts = await asyncio.to_thread(
            _store_and_hash, files, folder, self.core.settings.image_upload_max_bytes
        )
        checksum = await asyncio.to_thread(_content_checksum, image.format, folder)
        wanted = ctx.op.params.get("checksum")
        if wanted and wanted != checksum:
            raise ValidationFailed(
                f"Checksum mismatch: expected sha256 {wanted}, the image's is {checksum}",
                checksum=checksum,
            )
        min_disk_gb = image.min_disk_gb
        if image.format == "qcow2":
            with (folder / STORE_NAMES["qcow2"]).open("rb") as f:
                header = qcow2_header(f.read(32))
            if header is None:
                raise ValidationFailed("The file is not a qcow2 image", format="qcow2")
            virtual_size, has_backing = header
            if has_backing:
                raise ValidationFailed(
                    "A qcow2 image with a backing file cannot be registered (flatten it "
                    "with `qemu-img convert -O qcow2`)",
                    format="qcow2",
                )
            min_disk_gb = max(min_disk_gb, -(-virtual_size // _GIB))
        elif image.format == "raw":
            min_disk_gb = max(min_disk_gb, -(-parts["raw"]["size"] // _GIB))
        floor = stored_min_memory_mb(folder) if image.format == "kernel" else None
        ctx.progress(50)
        imported = []
        for i, host in enumerate(hosts):
            if not supported_driver(host.driver):
                continue
            try:
                await ensure_on_host(self.core, host, image)
                imported.append(host.hostname)
            except Exception as exc:  # an offline host gets it on first use
                log.warning("image %s not imported on %s yet: %s", image.id, host.hostname, exc)
            ctx.progress(50 + int(49 * (i + 1) / max(1, len(hosts))))
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            row = await session.get(Image, image.id, populate_existing=True)
            if row is not None:
                row.files = parts
                row.checksum = checksum
                row.size_bytes = sum(int(p["size"]) for p in parts.values())
                row.min_disk_gb = min_disk_gb
                row.min_memory_mb = floor
                row.status = "active"
                row.status_reason = None
            await session.commit()
        return {"checksum": checksum, "hosts": imported}

    async def import_failed(self, ctx: OpContext, code: str, message: str) -> None:
        shutil.rmtree(store_dir(self.core, ctx.op.resource_id), ignore_errors=True)
        await self._set_status(ctx.op.resource_id, "error", f"{code}: {message}")

    async def cancel_import(self, session: AsyncSession, op: Operation) -> None:
        image = await session.get(Image, op.resource_id, populate_existing=True)
        if image is not None:
            await session.delete(image)
        shutil.rmtree(store_dir(self.core, op.resource_id), ignore_errors=True)

    async def run_delete(self, ctx: OpContext) -> dict[str, Any] | None:
        async with self.core.db.sessionmaker() as session:
            image = await session.get(Image, ctx.op.resource_id)
            hosts = (await session.scalars(select(Host).where(Host.driver.in_(VM_DRIVERS)))).all()
        if image is None:
            return {"deleted": True}
        name = pool_image_name(image.id)
        for host in hosts:
            if not supported_driver(host.driver):
                continue
            driver: Any = self.core.drivers.for_host(host)
            await driver_call(self.core, host, driver.delete_image(name))
        shutil.rmtree(store_dir(self.core, image.id), ignore_errors=True)
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            row = await session.get(Image, image.id, populate_existing=True)
            if row is not None:
                await session.delete(row)
            await session.commit()
        return {"deleted": True}

    async def delete_failed(self, ctx: OpContext, code: str, message: str) -> None:
        await self._set_status(ctx.op.resource_id, "error", f"delete failed: {message}")

    async def cancel_delete(self, session: AsyncSession, op: Operation) -> None:
        image = await session.get(Image, op.resource_id, populate_existing=True)
        if image is not None:
            image.status = op.params.get("from_status", "active")

    async def _set_status(self, image_id: str, status: str, reason: str | None) -> None:
        async with self.core.db.sessionmaker() as session:
            await begin_write(session)
            row = await session.get(Image, image_id, populate_existing=True)
            if row is not None:
                row.status = status
                row.status_reason = reason
            await session.commit()
