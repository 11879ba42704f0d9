"""tests/airflow: the Airflow DAG of deploy/airflow under a real Airflow, in a venv of its own.

Airflow and its hundreds of pins stay out of the project's .venv, so these tests are
collected only when RUN_AIRFLOW_TESTS=1, which scripts/test-airflow-dag sets after making
that venv; the default suite skips this folder without importing Airflow. (The switch is not
named FLEET_*: fleet refuses FLEET_* variables it does not know, and the bash flavour of the
DAG passes its environment on to fleet.)
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

if os.environ.get("RUN_AIRFLOW_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
else:
    # Before Airflow is imported, which reads its configuration once: a throwaway home with
    # its own SQLite database and DAG folder, never the developer's AIRFLOW_HOME.
    _HOME = Path(tempfile.mkdtemp(prefix="fleet-airflow-home-"))
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
    (_HOME / "dags").mkdir()
    os.environ["AIRFLOW_HOME"] = str(_HOME)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_HOME / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
