"""Imaging: DICOM store and index, DICOMweb, DIMSE listener, rendering, de-identification."""
