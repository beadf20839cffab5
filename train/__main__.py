"""``python -m train fit --config quickstart.yaml`` | ``python -m train export CKPT OUT.pt``."""
import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "export":
        from data_prep.shell import one_line_errors
        from train.export import main as export_main

        with one_line_errors(ValueError, OSError):  # a missing/unreadable checkpoint, an unwritable OUT
            export_main(sys.argv[2:])
    else:
        from train.cli import main

        main()
