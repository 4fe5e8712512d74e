"""Workdir lock: one run per workdir, holder named on refusal, stale locks of dead runs taken over."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from erclap import workdir_lock


def _dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **fields):
  record = dict(host=socket.gethostname(), pid=os.getpid(), since="2024-01-02T03:04:05Z",
                command="python -m erclap.main --workdir=x", token="other")
  record.update(fields)
  with open(os.path.join(workdir, workdir_lock.LOCK_NAME), "w") as f:
    json.dump(record, f)
  return record


def test_lock_file_records_the_run_and_release_removes_it(tmp_path):
  workdir = str(tmp_path / "run")  # not created yet: the lock creates it
  path = os.path.join(workdir, ".erclap.lock")
  with workdir_lock.WorkdirLock(workdir) as lock:
    assert lock.held
    with open(path) as f:
      record = json.load(f)
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    assert record["command"] and record["since"].endswith("Z")
  assert not os.path.exists(path)


def test_second_run_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path)
  with workdir_lock.WorkdirLock(workdir):
    with pytest.raises(workdir_lock.WorkdirLockedError) as info:
      workdir_lock.WorkdirLock(workdir).acquire()
    holder = workdir_lock.read_holder(os.path.join(workdir, workdir_lock.LOCK_NAME))
  message = str(info.value)
  assert f"host {socket.gethostname()}" in message and f"pid {os.getpid()}" in message
  assert holder.since in message and holder.command in message
  assert f"rm {os.path.join(workdir, '.erclap.lock')}" in message


def test_live_process_on_this_host_keeps_its_lock(tmp_path):
  workdir = str(tmp_path)
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    record = _write_lock(workdir, pid=proc.pid)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {proc.pid}"):
      workdir_lock.WorkdirLock(workdir).acquire()
  finally:
    proc.kill()
    proc.wait()
  assert workdir_lock.read_holder(os.path.join(workdir, workdir_lock.LOCK_NAME)).token == record["token"]


def test_stale_lock_of_dead_process_is_taken_over(tmp_path, caplog, capsys):
  workdir = str(tmp_path)
  pid = _dead_pid()
  _write_lock(workdir, pid=pid)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(workdir):
      holder = workdir_lock.read_holder(os.path.join(workdir, workdir_lock.LOCK_NAME))
      assert holder.pid == os.getpid() and holder.token != "other"
  assert f"pid {pid}" in capsys.readouterr().out
  assert any("stale lock" in r.getMessage() and f"pid {pid}" in r.getMessage() for r in caplog.records)
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
  assert os.listdir(workdir) == []  # no debris of the take-over


def test_lock_from_another_host_is_refused_even_with_a_dead_pid(tmp_path):
  workdir = str(tmp_path)
  _write_lock(workdir, host="elsewhere-host", pid=_dead_pid())
  with pytest.raises(workdir_lock.WorkdirLockedError, match="host elsewhere-host"):
    workdir_lock.WorkdirLock(workdir).acquire()


def test_unreadable_lock_is_refused_with_removal_hint(tmp_path):
  workdir = str(tmp_path)
  open(os.path.join(workdir, workdir_lock.LOCK_NAME), "w").close()
  with pytest.raises(workdir_lock.WorkdirLockedError, match="cannot be read.*rm "):
    workdir_lock.WorkdirLock(workdir).acquire()


def test_released_on_error_and_never_removes_another_runs_lock(tmp_path):
  workdir = str(tmp_path)
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  with pytest.raises(KeyError):
    with workdir_lock.WorkdirLock(workdir):
      raise KeyError("boom")
  assert not os.path.exists(path)
  with workdir_lock.WorkdirLock(workdir):
    os.remove(path)
    record = _write_lock(workdir, pid=_dead_pid())  # someone else's lock now
  assert workdir_lock.read_holder(path).token == record["token"]


def test_remote_workdir_takes_no_lock(caplog):
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock("gs://bucket/run") as lock:
      assert not lock.held
  assert any("no workdir lock" in r.getMessage() for r in caplog.records)


def _can_create_in(directory) -> bool:
  try:
    os.close(os.open(os.path.join(directory, ".probe"), os.O_CREAT | os.O_WRONLY, 0o644))
  except OSError:
    return False
  os.remove(os.path.join(directory, ".probe"))
  return True


@pytest.fixture
def read_only_dir(tmp_path):
  """An existing directory this process cannot create files in: mode 555, or, for root (whom modes do not stop),
  a directory of sysfs."""
  directory = tmp_path / "read_only"
  directory.mkdir()
  directory.chmod(0o555)
  if _can_create_in(directory):
    directory.chmod(0o755)
    directory = "/sys/kernel"
    if not os.path.isdir(directory) or _can_create_in(directory):
      pytest.fail("no directory here refuses this process a new file")
  yield str(directory)
  if directory != "/sys/kernel":
    directory.chmod(0o755)


@pytest.mark.parametrize("where", ["itself", "its parent"])
def test_read_only_workdir_is_named_with_the_fix(read_only_dir, where):
  workdir = read_only_dir if where == "itself" else os.path.join(read_only_dir, "run")
  with pytest.raises(workdir_lock.WorkdirUnwritableError) as info:
    workdir_lock.WorkdirLock(workdir).acquire()
  message = str(info.value)
  assert f"Workdir {workdir} is not writable" in message and "--workdir" in message and "chmod" in message
  assert isinstance(info.value, workdir_lock.WorkdirLockedError)  # stops a run as a held lock does


def test_file_in_place_of_the_workdir_is_named(tmp_path):
  (tmp_path / "run").write_text("notes")
  with pytest.raises(workdir_lock.WorkdirUnwritableError, match=f"Output directory {tmp_path / 'run'} is a file"):
    workdir_lock.WorkdirLock(str(tmp_path / "run"), what="Output directory", flag="--out").acquire()
  assert (tmp_path / "run").read_text() == "notes"


@pytest.mark.slow
def test_read_only_workdir_stops_the_command_without_a_traceback(read_only_dir):
  from train_helpers import ROOT, subprocess_env

  workdir = os.path.join(read_only_dir, "run")
  result = subprocess.run([sys.executable, "-m", "erclap.main", f"--config={ROOT}/configs/demo.py",
                           f"--workdir={workdir}", "--mode=train"], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert f"FATAL Workdir {workdir} is not writable" in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr and not os.path.exists(workdir)
