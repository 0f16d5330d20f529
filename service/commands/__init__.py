"""Command implementations behind `deficiency …`: each takes the parsed arguments and
an output stream and returns the exit code. Errors are `CliError` (one line, exit 2
unless it says otherwise), never a traceback; the command line prints them."""
