from vfs_agent.commands.console import main

main()
