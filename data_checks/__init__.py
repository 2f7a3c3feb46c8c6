"""What data must satisfy before it is trained on or trusted: Great Expectations suites, the PII
scanner/redactor, and drift checks (Evidently). Training-file schema checks live in model.data."""
