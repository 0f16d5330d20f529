"""The authoring tools that run the engine: `check` (load, engine limits, static
analysis), the policy test runner, the static analysis itself and `replay` of the
audit log against a candidate ruleset. No command-line or HTTP handling here."""
