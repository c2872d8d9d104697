"""The distill study's parts: the student, the teacher and its stand-in, prompts, units and clips, the teacher-output
cache, matching, and the test's helpers (calibration, references, gallery, testing) that :mod:`..evaluation` and
:mod:`..module` use."""
