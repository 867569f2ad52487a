$ErrorActionPreference = 'Stop'
$taskName = 'localbuilder-0123abcd'
$userScript = 'C:\Windows\Temp\localbuilder-customize-2-0123abcd.ps1'
$runAs = 'packer'
$runner = $userScript + '.task.ps1'
$log = $userScript + '.log'
$exitFile = $userScript + '.exit'
Set-Content -LiteralPath $runner -Encoding UTF8 -Value @'
$ProgressPreference = 'SilentlyContinue'
try {
    & 'C:\Windows\Temp\localbuilder-customize-2-0123abcd.ps1'
    $code = if ($LASTEXITCODE) { $LASTEXITCODE } else { 0 }
} catch {
    Write-Output ($_ | Out-String)
    $code = 1
}
Set-Content -LiteralPath 'C:\Windows\Temp\localbuilder-customize-2-0123abcd.ps1.exit' -Value $code -Encoding ASCII
exit $code
'@
$powershell = 'powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass'
$arguments = '/c {0} -File "{1}" > "{2}" 2>&1' -f $powershell, $runner, $log
$task = @{
    TaskName = $taskName
    Action = New-ScheduledTaskAction -Execute 'cmd.exe' -Argument $arguments
    Settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
        -ExecutionTimeLimit ([TimeSpan]::Zero)
    Force = $true
}
if ($runAs -eq 'SYSTEM') {
    $task.Principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount `
        -RunLevel Highest
} else {
    $task.User = $runAs
    # The password arrives on stdin (never on disk or a command line): as pipeline input, or else
    # readable from the console stream.
    foreach ($line in $input) { if ($null -eq $task.Password) { $task.Password = [string]$line } }
    if ($null -eq $task.Password) { $task.Password = [Console]::In.ReadLine() }
    $task.RunLevel = 'Highest'
}
Register-ScheduledTask @task | Out-Null
$task = $null
Start-ScheduledTask -TaskName $taskName
$position = 0
function Send-NewOutput {
    if (-not (Test-Path -LiteralPath $log)) { return }
    $stream = [System.IO.File]::Open($log, 'Open', 'Read', 'ReadWrite')
    try {
        [void]$stream.Seek($script:position, 'Begin')
        $text = (New-Object System.IO.StreamReader($stream)).ReadToEnd()
        $script:position = $stream.Length
    } finally {
        $stream.Close()
    }
    if ($text) { [Console]::Out.Write($text) }
}
while (-not (Test-Path -LiteralPath $exitFile)) {
    Start-Sleep -Milliseconds 500
    Send-NewOutput
    $state = (Get-ScheduledTask -TaskName $taskName).State
    $last = (Get-ScheduledTaskInfo -TaskName $taskName).LastTaskResult
    $pending = $last -eq 267009 -or $last -eq 267011
    if ($state -ne 'Running' -and $state -ne 'Queued' -and -not $pending) {
        break
    }
}
Send-NewOutput
if (Test-Path -LiteralPath $exitFile) {
    $code = [int](Get-Content -LiteralPath $exitFile -Raw)
} else {
    $code = (Get-ScheduledTaskInfo -TaskName $taskName).LastTaskResult
    [Console]::Error.WriteLine("the scheduled task ended without an exit code (task result $code)")
}
Unregister-ScheduledTask -TaskName $taskName -Confirm:$false
Remove-Item -LiteralPath $runner, $log, $exitFile, $userScript -Force -ErrorAction SilentlyContinue
exit $code
