# localbuilder windows-setup.ps1 — first-boot configuration of a Windows build guest.
#
# Run once by the answer file's FirstLogonCommands from the localbuilder ISO (as the build account,
# elevated). It makes the guest reachable the way AIB's build VM is: WinRM over HTTPS on 5986.
# Inputs: -ConfigPath <path to localbuilder-setup.json on the same ISO> holding
#   username, password (the generated build-account password), pfx (file name of the listener
#   certificate, generated on the host so the host can pin its SHA-256 fingerprint), pfx_password, port.
# Steps: build account (created or its password reset; Administrators; never expires) →
#   LocalAccountTokenFilterPolicy=1 (a local administrator gets a full token over WinRM) → certificate
#   into LocalMachine\My → WinRM service automatic + HTTPS listener with that certificate → firewall
#   rule for the port → auto-logon turned off again.
# Exit codes: 0 done; 1 a step failed (see C:\Windows\Temp\localbuilder-setup.log).
# Idempotency: every step replaces what an earlier run created. The password is never logged.
param(
    [Parameter(Mandatory = $true)][string]$ConfigPath
)
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$logFile = 'C:\Windows\Temp\localbuilder-setup.log'
function Write-Log([string]$text) {
    $line = '{0:o} {1}' -f (Get-Date), $text
    Add-Content -LiteralPath $logFile -Value $line
    Write-Output $line
}

try {
    $config = Get-Content -LiteralPath $ConfigPath -Raw | ConvertFrom-Json
    $media = Split-Path -Parent $ConfigPath
    $port = [int]$config.port

    Write-Log "build account $($config.username)"
    $secure = ConvertTo-SecureString -String $config.password -AsPlainText -Force
    $account = Get-LocalUser -Name $config.username -ErrorAction SilentlyContinue
    if ($null -eq $account) {
        New-LocalUser -Name $config.username -Password $secure -PasswordNeverExpires -AccountNeverExpires | Out-Null
    } else {
        Set-LocalUser -Name $config.username -Password $secure -PasswordNeverExpires $true
        Enable-LocalUser -Name $config.username
    }
    $admins = (Get-LocalGroup -SID 'S-1-5-32-544').Name
    if (-not (Get-LocalGroupMember -Group $admins -Member $config.username -ErrorAction SilentlyContinue)) {
        Add-LocalGroupMember -Group $admins -Member $config.username
    }

    Write-Log 'LocalAccountTokenFilterPolicy = 1'
    New-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System' `
        -Name LocalAccountTokenFilterPolicy -Value 1 -PropertyType DWord -Force | Out-Null

    Write-Log 'importing the WinRM certificate'
    $pfxPassword = ConvertTo-SecureString -String $config.pfx_password -AsPlainText -Force
    $cert = Import-PfxCertificate -FilePath (Join-Path $media $config.pfx) `
        -CertStoreLocation Cert:\LocalMachine\My -Password $pfxPassword
    Write-Log "certificate $($cert.Thumbprint) ($($cert.Subject))"

    Write-Log 'WinRM service and HTTPS listener'
    Set-Service -Name WinRM -StartupType Automatic
    Start-Service -Name WinRM
    Get-ChildItem -Path WSMan:\localhost\Listener |
        Where-Object { $_.Keys -contains 'Transport=HTTPS' } |
        Remove-Item -Recurse -Force
    $hostname = $cert.Subject -replace '^CN=', ''
    New-Item -Path WSMan:\localhost\Listener -Transport HTTPS -Address * -Port $port `
        -CertificateThumbPrint $cert.Thumbprint -HostName $hostname -Force | Out-Null
    Set-Item -Path WSMan:\localhost\Service\Auth\Basic -Value $false
    Set-Item -Path WSMan:\localhost\MaxTimeoutms -Value 1800000

    Write-Log "firewall rule for TCP $port"
    Get-NetFirewallRule -Name 'localbuilder-winrm-https' -ErrorAction SilentlyContinue | Remove-NetFirewallRule
    New-NetFirewallRule -Name 'localbuilder-winrm-https' -DisplayName 'localbuilder WinRM HTTPS' `
        -Direction Inbound -Protocol TCP -LocalPort $port -Action Allow -Profile Any | Out-Null

    Write-Log 'turning auto-logon off'
    $winlogon = 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon'
    Set-ItemProperty -Path $winlogon -Name AutoAdminLogon -Value '0'
    Remove-ItemProperty -Path $winlogon -Name DefaultPassword -ErrorAction SilentlyContinue

    Write-Log 'done'
    exit 0
} catch {
    Write-Log "failed: $($_.Exception.Message)"
    exit 1
}
