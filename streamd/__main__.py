from streamd.cli import main

if __name__ == "__main__":  # guarded: spawned stage processes import this module too
    raise SystemExit(main())
