from app.cli import main

if __name__ == "__main__":  # (not when a decode process imports the main module)
    raise SystemExit(main())
