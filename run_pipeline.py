#!/usr/bin/env python3
"""Entry point: `python run_pipeline.py --videos DIR` runs every stage; `--help` lists the stages."""
from pipeline.cli import main

if __name__ == "__main__":
    main()
