# localbuilder windows-update.ps1 — install Windows updates through the Windows Update Agent API.
#
# Runs as SYSTEM from a scheduled task (the WUA API refuses a WinRM network logon), started by the
# WindowsUpdate customizer, which loops "run this script, restart" while it exits 101.
# Inputs:
#   -SearchCriteria  WUA search string (default 'BrowseOnly=0 and IsInstalled=0')
#   -Filters         'include:<PowerShell expression>' / 'exclude:<expression>' evaluated with $_ = the
#                    update (IUpdate); the first filter that matches decides; no match = not installed.
#                    Default @('include:$true').
#   -UpdateLimit     install at most this many updates per run (default 1000)
#   -TestCounterFile test mode: do not touch Windows Update; count runs in this file and exit 101 for
#                    the first -TestReboots runs, then 0 (exercises the reboot loop without updates).
# Exit codes: 0 nothing (more) to install; 101 updates installed and a reboot is needed, or a reboot
# was pending before installing (WU_E_INSTALL_NOT_ALLOWED 0x80240016), or more updates than
# -UpdateLimit remain; 1 an error (message on stderr).
# Idempotency: safe to run again at any time; it only installs what the search still finds.
param(
    [string]$SearchCriteria = 'BrowseOnly=0 and IsInstalled=0',
    [string[]]$Filters = @('include:$true'),
    [int]$UpdateLimit = 1000,
    [string]$TestCounterFile = '',
    [int]$TestReboots = 2
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$RebootNeeded = 101
$InstallNotAllowed = -2145124330  # 0x80240016 as a signed HRESULT

if ($TestCounterFile) {
    $count = 0
    if (Test-Path -LiteralPath $TestCounterFile) {
        $count = [int](Get-Content -LiteralPath $TestCounterFile -Raw)
    }
    $count += 1
    Set-Content -LiteralPath $TestCounterFile -Value $count -Encoding ASCII
    Write-Output "test mode: run $count, $TestReboots run(s) ask for a reboot"
    if ($count -le $TestReboots) { exit $RebootNeeded }
    exit 0
}

function Test-RebootPending {
    $keys = @(
        'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired',
        'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending'
    )
    foreach ($key in $keys) {
        if (Test-Path -LiteralPath $key) { return $true }
    }
    return (New-Object -ComObject Microsoft.Update.SystemInfo).RebootRequired
}

$rules = foreach ($filter in $Filters) {
    if ($filter -match '^(include|exclude):(.*)$') {
        [pscustomobject]@{ Include = ($Matches[1] -eq 'include'); Test = [ScriptBlock]::Create($Matches[2]); Text = $filter }
    } else {
        [Console]::Error.WriteLine("invalid filter '$filter': it must start with include: or exclude:")
        exit 1
    }
}

if (Test-RebootPending) {
    Write-Output 'a reboot is pending: restarting before searching for updates'
    exit $RebootNeeded
}

$session = New-Object -ComObject Microsoft.Update.Session
$session.ClientApplicationID = 'localbuilder'
$installedTotal = 0
for ($pass = 1; $pass -le 5; $pass++) {
    Write-Output "searching for updates: $SearchCriteria"
    $found = $session.CreateUpdateSearcher().Search($SearchCriteria)
    $selected = New-Object -ComObject Microsoft.Update.UpdateColl
    $more = $false
    foreach ($update in $found.Updates) {
        $decision = $null
        foreach ($rule in $rules) {
            if (@($update | Where-Object -FilterScript $rule.Test).Count -gt 0) {
                $decision = $rule.Include
                break
            }
        }
        if (-not $decision) {
            Write-Output "skipped: $($update.Title)"
            continue
        }
        if ($installedTotal + $selected.Count -ge $UpdateLimit) {
            $more = $true
            continue
        }
        if (-not $update.EulaAccepted) { $update.AcceptEula() }
        [void]$selected.Add($update)
        Write-Output "selected: $($update.Title)"
    }
    if ($selected.Count -eq 0) {
        if ($more) { Write-Output "updateLimit $UpdateLimit reached"; exit $RebootNeeded }
        Write-Output 'no more updates to install'
        exit 0
    }
    $downloader = $session.CreateUpdateDownloader()
    $downloader.Updates = $selected
    [void]$downloader.Download()
    $installer = $session.CreateUpdateInstaller()
    $installer.Updates = $selected
    try {
        $result = $installer.Install()
    } catch {
        if ($_.Exception.HResult -eq $InstallNotAllowed) {
            Write-Output 'installation not allowed now (0x80240016): a reboot is pending'
            exit $RebootNeeded
        }
        throw
    }
    for ($i = 0; $i -lt $selected.Count; $i++) {
        $code = $result.GetUpdateResult($i).ResultCode  # 2 succeeded, 3 with errors, 4 failed
        Write-Output ("installed (result {0}): {1}" -f $code, $selected.Item($i).Title)
    }
    $installedTotal += $selected.Count
    if ($result.RebootRequired -or $more) {
        exit $RebootNeeded
    }
}
exit 0
