# localbuilder sysprep.ps1 — the default C:\DeprovisioningScript.ps1 for Windows builds.
#
# What AIB's default deprovisioning does (Sysprep /oobe /generalize /quiet /quit, then poll ImageState
# until IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE), made tolerant of a local VM:
#   * the Azure guest agent services (RdAgent, WindowsAzureTelemetryService, WindowsAzureGuestAgent)
#     are waited for only if they exist, and at most -ServiceWait seconds;
#   * the ImageState poll is bounded by -Timeout; on failure the tail of Sysprep's setuperr.log is shown.
# Inputs:  -Timeout <seconds> (default 1800), -ServiceWait <seconds> (default 300).
# Exit codes: 0 generalized (the caller powers the guest off); 1 Sysprep failed or timed out.
# Idempotency: running it on an already generalized image exits 0 without running Sysprep again.
# A customize step that writes its own C:\DeprovisioningScript.ps1 replaces this script (as in AIB).
param(
    [int]$Timeout = 1800,
    [int]$ServiceWait = 300
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$stateKey = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State'
$statusKey = 'HKLM:\SYSTEM\Setup\Status\SysprepStatus'
$sealed = 'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE'

function Get-ImageState {
    (Get-ItemProperty -Path $stateKey -ErrorAction SilentlyContinue).ImageState
}

if ((Get-ImageState) -eq $sealed) {
    Write-Output '>>> image is already generalized'
    exit 0
}

foreach ($name in 'RdAgent', 'WindowsAzureTelemetryService', 'WindowsAzureGuestAgent') {
    $service = Get-Service -Name $name -ErrorAction SilentlyContinue
    if ($null -eq $service) {
        Write-Output ">>> service $name is not installed: not waiting for it"
        continue
    }
    $waited = 0
    while ($service.Status -ne 'Running' -and $waited -lt $ServiceWait) {
        Write-Output ">>> waiting for service $name ($($service.Status))"
        Start-Sleep -Seconds 5
        $waited += 5
        $service.Refresh()
    }
}

# An unattend.xml left in the Sysprep folder (e.g. by our first-boot media) would be applied again.
$leftover = Join-Path $env:SystemRoot 'System32\Sysprep\unattend.xml'
if (Test-Path -LiteralPath $leftover) {
    Remove-Item -LiteralPath $leftover -Force
}

Write-Output '>>> running Sysprep /oobe /generalize /quiet /quit'
& (Join-Path $env:SystemRoot 'System32\Sysprep\Sysprep.exe') /oobe /generalize /quiet /quit

$elapsed = 0
while ($true) {
    $state = Get-ImageState
    $generalization = (Get-ItemProperty -Path $statusKey -ErrorAction SilentlyContinue).GeneralizationState
    Write-Output "ImageState=$state GeneralizationState=$generalization"
    if ($state -eq $sealed) {
        break
    }
    if ($elapsed -ge $Timeout) {
        [Console]::Error.WriteLine("Sysprep did not reach $sealed within $Timeout s")
        $log = Join-Path $env:SystemRoot 'System32\Sysprep\Panther\setuperr.log'
        if (Test-Path -LiteralPath $log) {
            Get-Content -LiteralPath $log -Tail 20 | ForEach-Object { [Console]::Error.WriteLine($_) }
        }
        exit 1
    }
    Start-Sleep -Seconds 5
    $elapsed += 5
}
Write-Output '>>> Sysprep complete'
exit 0
