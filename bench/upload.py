"""Upload of a 30 GiB fixed VHD holding 0.5 GiB of data to Azurite: localbuilder vs `az storage blob upload`.

Both in the same run, same file, same emulator. Prints time, bytes stored and client CPU time, as ratios.
`az` comes from Debian's azure-cli package (installed here when missing).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from localbuilder.azure.pageblob import upload_vhd
from localbuilder.azure.target import resolve_target
from tests.fixtures.azurite import make_sparse_vhd, running_azurite

MiB = 1024 * 1024
GiB = 1024 * MiB


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _stored_bytes(conn: str, container: str, blob: str) -> int:
    from azure.storage.blob import BlobClient

    client = BlobClient.from_connection_string(conn, container, blob)
    return sum(r.end + 1 - r.start for r in client.list_page_ranges())


def main() -> dict[str, Any]:
    if shutil.which("az") is None and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "azure-cli"],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        d = Path(tmp)
        vhd = make_sparse_vhd(d)
        with running_azurite(d / "azurite") as az:
            from azure.storage.blob import BlobServiceClient

            BlobServiceClient.from_connection_string(az.connection_string).create_container("bench")
            target = resolve_target(az.blob_url("bench", "lb.vhd"), connection_string=az.connection_string)
            for verify in ("ranges", "full"):
                name = f"lb-{verify}.vhd"
                target = resolve_target(az.blob_url("bench", name), connection_string=az.connection_string)
                res = upload_vhd(vhd, target, progress=False, resume=False, verify=verify)  # type: ignore[arg-type]
                results[f"localbuilder_{verify}"] = {
                    "seconds": round(res.seconds, 2),
                    "cpu_seconds": round(res.cpu_seconds, 2),
                    "bytes_sent": res.bytes_sent,
                    "stored": _stored_bytes(az.connection_string, "bench", name),
                }
            if shutil.which("az"):
                cpu0, t0 = _children_cpu(), time.monotonic()
                subprocess.run(
                    [
                        "az",
                        "storage",
                        "blob",
                        "upload",
                        "--type",
                        "page",
                        "--file",
                        str(vhd),
                        "--container-name",
                        "bench",
                        "--name",
                        "az.vhd",
                        "--connection-string",
                        az.connection_string,
                        "--only-show-errors",
                        "--max-connections",
                        "4",
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                results["az"] = {
                    "seconds": round(time.monotonic() - t0, 2),
                    "cpu_seconds": round(_children_cpu() - cpu0, 2),
                    "stored": _stored_bytes(az.connection_string, "bench", "az.vhd"),
                }
    lb = results["localbuilder_ranges"]
    print("upload 30 GiB fixed VHD / 0.5 GiB data → Azurite (loopback)")
    for name, r in results.items():
        print(
            f"  {name:22s} {r['seconds']:8.1f} s  cpu {r['cpu_seconds']:7.1f} s"
            f"  stored {r['stored'] / MiB:8.1f} MiB"
        )
    if "az" in results:
        results["ratio_time_az_over_localbuilder"] = round(results["az"]["seconds"] / lb["seconds"], 1)
        results["ratio_cpu_az_over_localbuilder"] = round(
            results["az"]["cpu_seconds"] / max(lb["cpu_seconds"], 0.01), 1
        )
        print(
            f"  localbuilder is {results['ratio_time_az_over_localbuilder']}× faster than az "
            f"(target ≥ 20×), {results['ratio_cpu_az_over_localbuilder']}× less CPU"
        )
    else:
        print("  az not available: install azure-cli for the comparison")
    return results


if __name__ == "__main__":
    main()
