& 'C:\Windows\Temp\localbuilder-windows-update.ps1' -SearchCriteria 'IsInstalled=0' -Filters @('exclude:$_.Title -like ''*Preview*''', 'include:$true') -UpdateLimit 20
exit $LASTEXITCODE
