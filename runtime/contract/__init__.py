"""The contract every stage shares: constants, typed errors and row reason codes, the row contract (columns,
nulls, reasons), the exported folder's manifest, and atomic files (whole or not at all). Imports nothing above it."""
