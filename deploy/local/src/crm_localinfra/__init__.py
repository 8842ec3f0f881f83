"""Local infrastructure for machines without Docker: Apache Kafka from Maven Central and
SecantusDB from PyPI as processes, the ``crm-infra`` CLI, and pytest fixtures.

Kept empty of imports on purpose: the pytest plugin is loaded by every test run and must be cheap.
"""
