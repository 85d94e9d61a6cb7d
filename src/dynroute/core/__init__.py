"""The torch-free core: errors, checks, exit rules, policies, decisions, selection and
guarantees. Everything here runs without torch (the export runtime, ``dynroute.deploy``,
is built on it) and imports nothing above it."""
