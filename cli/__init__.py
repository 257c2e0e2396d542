"""The app shell: the `fedq` command, the local demo and the processes it starts and stops.

It sits above everything else (server/, client/, monitor/, the fedq core) and nothing imports it.
"""
