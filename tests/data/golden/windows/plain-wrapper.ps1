$script = 'C:\Windows\Temp\localbuilder-customize-2-0123abcd.ps1'
try {
    & $script
    $code = if ($LASTEXITCODE) { $LASTEXITCODE } else { 0 }
} catch {
    [Console]::Error.WriteLine(($_ | Out-String))
    $code = 1
} finally {
    Remove-Item -LiteralPath $script -Force -ErrorAction SilentlyContinue
}
exit $code
