"""FHIR R4 records: the store, search, bundles, history, operations and subscriptions."""
