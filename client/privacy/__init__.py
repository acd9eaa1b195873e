"""The data holder's privacy budget: pure accounting with Opacus's accountants, and the ledger file
that charges each round and refuses one past the budget."""
