-- hotfolder Folder Action: every .txt or .toml file added to the folder this script is
-- attached to is submitted to the hot folder, then moved into a "Submitted" subfolder
-- (Apple: a folder action should leave its folder empty).
--
-- Use it to turn any folder into a drop folder - even one on the Desktop or in
-- Documents, which the daemon itself may not read: the Folder Actions service reads the
-- file and hands over a copy. Install: docs/mac.md, "Folder Actions".
--
-- Set these two paths first (`hotfolder agent install` prints them):
property hotfolderPython : "/Users/you/hotfolder/.venv/bin/python"
property hotfolderRoot : "/Users/you/Movies/Hotfolder"

on adding folder items to thisFolder after receiving addedItems
	repeat with anItem in addedItems
		set itemPath to POSIX path of anItem
		if itemPath ends with ".txt" or itemPath ends with ".toml" then
			try
				-- Every value is passed through "quoted form of": no file name is ever parsed by the shell.
				do shell script (quoted form of hotfolderPython) & " -m hotfolder submit --root " & ¬
					(quoted form of hotfolderRoot) & " " & (quoted form of itemPath)
				tell application "Finder"
					if not (exists folder "Submitted" of thisFolder) then
						make new folder at thisFolder with properties {name:"Submitted"}
					end if
					move anItem to folder "Submitted" of thisFolder with replacing
				end tell
			on error errorMessage
				display notification errorMessage with title "hotfolder: not submitted"
			end try
		end if
	end repeat
end adding folder items to
