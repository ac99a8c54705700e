"""`python -m minedraft.drafter`: the drafter process (see minedraft.drafter.server)."""

from minedraft.drafter.server import main

if __name__ == "__main__":
    main()
