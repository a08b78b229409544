from vfs_agent.cli import main

main()
