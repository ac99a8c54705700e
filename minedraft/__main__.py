"""`python -m minedraft`: the command line."""

from minedraft.cli import main

if __name__ == "__main__":
    main()
