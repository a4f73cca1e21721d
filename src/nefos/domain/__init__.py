"""Pure domain types: enums, permissions and the error tree. No I/O here."""
