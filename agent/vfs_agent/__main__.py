from vfs_agent.console import main

main()
