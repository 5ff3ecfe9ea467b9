"""The classroom attendance product: enrolment checks, the SQLite database, the service (enrol, mark, report),
session merge, reports, the LFW demo and the teachers' web app. It identifies faces with ``matching`` over the
embeddings ``pipeline`` computes."""
