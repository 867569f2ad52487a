"""File customizer: copy a fetched ``sourceUri`` to ``destination`` in the guest.

AIB's rule for Linux: "the only path Image Builder can write to is /tmp" (File customizer docs,
https://learn.microsoft.com/azure/virtual-machines/linux/image-builder-json#file-customizer) — the
file is written as the unprivileged build user, and templates move it with a later ``sudo`` Shell step.
We refuse other Linux destinations before the guest boots, as the service would fail the build;
``--allow-any-destination`` lifts the rule: the file is then uploaded to /tmp and installed with
``sudo`` (a convenience AIB does not have). On Windows any destination is allowed (the build account is
an administrator) and the parent directory must exist.
"""

from __future__ import annotations

import posixpath
import secrets
import shlex
from pathlib import Path

from localbuilder.customizers import Customizer, StepContext, StepFailed
from localbuilder.errors import CommunicatorError, CustomizerError
from localbuilder.redact import hide_query as redact
from localbuilder.template import model
from localbuilder.template.model import OsType
from localbuilder.windows.files import upload_file

LINUX_ALLOWED_PREFIX = "/tmp/"


def destination_allowed(destination: str, *, allow_any: bool) -> bool:
    normal = posixpath.normpath(destination)
    return allow_any or (normal.startswith(LINUX_ALLOWED_PREFIX) and normal != "/tmp")


class File(Customizer[model.FileCustomizer], type_name="File"):
    def preflight(self, os: OsType, *, allow_any_destination: bool, where: str) -> None:
        super().preflight(os, allow_any_destination=allow_any_destination, where=where)
        dst = self.step.destination
        if os is OsType.linux:
            if not dst.startswith("/"):
                raise CustomizerError(
                    f"{where}.destination: {dst!r} is not an absolute path",
                    hint="Give a full path such as /tmp/index.html.",
                )
            if not destination_allowed(dst, allow_any=allow_any_destination):
                raise CustomizerError(
                    f"{where}.destination: {dst!r} is outside /tmp; Azure Image Builder can only write "
                    "files to /tmp on Linux and would fail this build",
                    hint="Write to /tmp and move the file with a Shell step using sudo, or pass "
                    "--allow-any-destination to let localbuilder install it with sudo.",
                )

    def apply(self, ctx: StepContext) -> None:
        uri: str = self.step.source_uri
        local = ctx.local_file(uri)
        shown = redact(uri)  # a storage URL's query is its SAS token: never in the log
        dst: str = self.step.destination
        where = self.describe(ctx.index, ctx.section)
        if ctx.os is OsType.windows:
            ctx.remaining()
            upload_file(ctx.comm, local, dst)
            ctx.note(f"copied {shown} ({local.stat().st_size} bytes) to {dst}")
            return
        normal = posixpath.normpath(dst)
        if destination_allowed(normal, allow_any=False):
            self._upload(ctx, local, normal, where)
            ctx.note(f"copied {shown} ({local.stat().st_size} bytes) to {normal}")
            return
        # --allow-any-destination: stage in /tmp as the build user, then install as root.
        staged = f"/tmp/localbuilder-file-{secrets.token_hex(4)}"
        self._upload(ctx, local, staged, where)
        ctx.note(f"copied {shown} ({local.stat().st_size} bytes) to {staged}; installing it as {normal}")
        parent = posixpath.dirname(normal) or "/"
        q_staged, q_dst, q_parent = shlex.quote(staged), shlex.quote(normal), shlex.quote(parent)
        # Every path is quoted as one shell word: a destination may hold quotes, ;, $(), newlines.
        q_missing = shlex.quote(f"parent directory {parent} does not exist")
        result = ctx.run(
            f"if [ ! -d {q_parent} ]; then echo {q_missing} >&2; "
            f"rm -f {q_staged}; exit 3; fi; "
            f"sudo -n install -m 0644 {q_staged} {q_dst}; rc=$?; rm -f {q_staged}; exit $rc"
        )
        if not result.ok:
            raise StepFailed(
                f"{where}: could not install {normal} (exit code {result.exit_status})",
                exit_status=result.exit_status,
                output_tail=result.stderr_tail or result.stdout_tail,
                hint="The parent directory must exist: create it in an earlier Shell step.",
            )

    @staticmethod
    def _upload(ctx: StepContext, local: Path, dst: str, where: str) -> None:
        ctx.remaining()
        try:
            ctx.comm.upload(local, dst, mode=0o644)
        except CommunicatorError as exc:
            if type(exc) is not CommunicatorError:
                raise  # Disconnected / timeouts keep their meaning
            raise CustomizerError(
                f"{where}: cannot write {dst}: {exc.message}",
                hint="The parent directory must exist and be writable by the build user: create it "
                "in an earlier Shell step.",
            ) from exc
