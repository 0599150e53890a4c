"""The one ingest pipeline, index and blob store shared by pacs/, gateway/ and fhir_adapter/."""

from storage.dicom import threads as pydicom_threads

# Before any thread reads DICOM: pydicom's strict_reading() must not leak across threads.
pydicom_threads.install()
