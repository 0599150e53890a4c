"""The test kit: who asks, what the archive holds, and the real peers that ask it.

- `principals`: one table of who may ask (a hospital's CT, clinicians and integrators of two
  organizations, an admin, an unregistered AE) and `ctx`, their request contexts;
- `seed`: the organizations of that table and `seed(archive, *datasets, as_=...)`;
- `studies`: the study builder of the search tests; `dicom_factory`: single objects, good and bad;
  `mutations`: 100 valid files, each broken by one named mutation from a fixed seed;
- `net`, `databases`, `backends`, `tools`: free ports, throwaway PostgreSQL databases, the two
  backend pairs, and system tools that skip (or fail under PACS_TEST_REQUIRE_ALL=1);
- `dimse`, `dicomweb`, `servers`: dcmtk and pynetdicom peers, the gateway in a thread with
  dicomweb-client, and `pacs serve` as a subprocess;
- `inspect`: what the archive holds, read from outside the code under test.

conftest.py files only declare fixtures built from these.
"""
