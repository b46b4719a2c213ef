"""`python manage.py demo`: the whole Prospect loop on one machine, until Ctrl-C.

Sets up what the loop needs (database, the one project `demo`, the offline demo model, two users,
an active model version, a first batch of outputs to rate), then runs the web server, the serving
process (models; the OpenAI-compatible API the web server forwards at /v1/), a CPU worker, a GPU
worker and beat as child processes and supervises them. Embedded defaults: SQLite under DATA_DIR, Redis
when one answers at REDIS_URL, else kombu's filesystem broker under DATA_DIR/broker (see
config/celery.py). `--simulate` adds the simulated annotators, so the loop turns with no person.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.shortcuts import resolve_url
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from config.celery import app as celery_app
from projects.models import Membership
from projects.selectors import default_project
from projects.services import set_membership
from training import dispatch, registry
from training.management.commands._demo_setup import ensure_demo_model
from training.management.commands.simulate_annotators import DEMO_TRAINING
from training.models import TrainingPolicy
from training.policy import get_policy
from training.runs import reap_orphaned_runs
from training.scheduler import install_schedule
from training.serving import top_up_annotation_queue, unrated_generation_count

DEMO_USERS = (
    # (username, password, is_staff_and_superuser, role in the demo project)
    ("admin", "admin", True, Membership.Role.ADMIN),
    ("annotator", "annotator", False, Membership.Role.ANNOTATOR),
)
# How many unrated outputs the queue should hold (at start, and topped up periodically).
SEED_QUEUE_SIZE = 32
REFILL_TASK_NAME = "prospect: top up the annotation queue"
DEMO_REFILL_SECONDS = 60
# The demo's retraining policy: small enough that a person rating for a few minutes sees a run.
DEMO_MIN_NEW_VOTES = 40
DEMO_COOLDOWN_SECONDS = 60
DEMO_RETRAIN_CHECK_SECONDS = 15
# How long a child gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 15.0
SUPERVISE_INTERVAL_SECONDS = 0.5


@dataclass
class Child:
    name: str
    argv: list[str]
    # A child whose normal end is not a failure of the demo (the simulated annotators finish).
    may_finish: bool = False
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = field(default=None, repr=False)


class Command(BaseCommand):
    help = "Run Prospect's whole loop on this machine (web, workers, beat) until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address of the web server (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port of the web server (default 8000).")
        parser.add_argument(
            "--serving-port",
            type=int,
            default=8001,
            help="Port of the serving process, on the web server's address (default 8001).",
        )
        parser.add_argument(
            "--simulate",
            action="store_true",
            help="Also run the simulated annotators, so the loop turns with no person.",
        )
        parser.add_argument(
            "--simulate-rounds",
            type=int,
            default=5,
            help="Rounds of the simulated annotators with --simulate (default 5).",
        )
        parser.add_argument(
            "--exit-after",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Stop everything after this many seconds (smoke tests).",
        )
        parser.add_argument("--no-seed", action="store_true", help="Do not put first outputs into the queue.")

    def handle(self, *args, **options):
        self._stop_requested = False
        self._stdout_lock = threading.Lock()
        data_dir = Path(settings.DATA_DIR)
        data_dir.mkdir(parents=True, exist_ok=True)

        self.say(f"data directory: {data_dir}")
        call_command("migrate", interactive=False, verbosity=0)
        model_dir = ensure_demo_model(self.say)
        # The installation's one project (the migrations create it): a single team names no project.
        self.project = default_project()
        self.say(f"project: {self.project.name}")
        self.ensure_users()
        # Only activates the demo model when nothing is active yet: a restart keeps the loop's progress.
        version = registry.ensure_base_version(str(model_dir), project=self.project)
        self.say(f"active model version: {version.name}")
        self.ensure_demo_policy(model_dir)
        if not options["no_seed"]:
            self.seed_queue()
        self.say(f"broker: {celery_app.conf.broker_url} ({celery_app.conf.prospect_broker_kind})")

        children = self.children(options)
        env = self.child_env(options)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request_stop)
        failed = False
        try:
            for child in children:
                self.start(child, env)
            base_url = f"http://{options['host']}:{options['port']}"
            serving = next(child for child in children if child.name == "serving")
            if self.wait_for_web(base_url, children[0]) and self.wait_for_web(env["PROSPECT_SERVING_URL"], serving):
                self.say(f"ready: {base_url}/  (admin/admin, annotator/annotator); Ctrl-C stops everything")
                self.say(f'OpenAI-compatible API: {base_url}/v1/  (model "{self.project.name}", a project API key)')
            failed = self.supervise(children, options["exit_after"])
        finally:
            self.stop_all(children)
            self.reap_runs()
        if failed:
            raise CommandError("a child process exited unexpectedly; everything was stopped")
        self.say("demo stopped")

    # --- setup -----------------------------------------------------------------------------------

    def ensure_users(self) -> None:
        if not settings.DEBUG:
            # admin/admin on a production database would be an open door: demo mode only.
            self.say("DEBUG is off: no demo accounts created (use createsuperuser and add_annotator)")
            return
        User = get_user_model()
        with transaction.atomic():
            for username, password, is_admin, role in DEMO_USERS:
                user, created = User.objects.get_or_create(username=username)
                if created:
                    user.set_password(password)
                user.is_staff = user.is_superuser = is_admin
                user.save()
                set_membership(self.project, user, role)
        self.say(
            f"users: admin / admin (superuser, project admin of {self.project.name}), "
            f"annotator / annotator (annotator of {self.project.name})"
        )

    def ensure_demo_policy(self, model_dir: Path) -> None:
        """On a fresh database, a retraining policy that makes the tiny demo model move.

        Only the first start sets it: afterwards the admin's edits (Admin → Training policy) win.
        """
        if TrainingPolicy.objects.filter(project=self.project).exists():
            return
        policy = get_policy(self.project)
        for name, value in DEMO_TRAINING.items():
            setattr(policy, name, value)
        policy.base_model = str(model_dir)
        policy.min_new_votes = DEMO_MIN_NEW_VOTES
        policy.cooldown_seconds = DEMO_COOLDOWN_SECONDS
        policy.full_clean()
        policy.save()
        install_schedule(check_seconds=DEMO_RETRAIN_CHECK_SECONDS)
        every, _ = IntervalSchedule.objects.get_or_create(every=DEMO_REFILL_SECONDS, period=IntervalSchedule.SECONDS)
        # After a promotion, annotators should soon rate outputs of the new version.
        PeriodicTask.objects.get_or_create(
            name=REFILL_TASK_NAME,
            defaults={
                "task": dispatch.FILL_QUEUE,
                "interval": every,
                "queue": "gpu",
                "kwargs": json.dumps({"n": SEED_QUEUE_SIZE, "top_up": True, "project_id": self.project.pk}),
            },
        )
        self.say(
            f"retraining policy: every {DEMO_MIN_NEW_VOTES} new votes, cool-down {DEMO_COOLDOWN_SECONDS}s "
            f"(edit it in the admin)"
        )

    def seed_queue(self) -> None:
        added = top_up_annotation_queue(SEED_QUEUE_SIZE, project=self.project)
        self.say(f"annotation queue: {unrated_generation_count(self.project)} outputs to rate ({len(added)} new)")

    # --- children --------------------------------------------------------------------------------

    def children(self, options) -> list[Child]:
        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        celery = [python, "-m", "celery", "-A", "config"]
        children = [
            # --noreload: one process we can stop; --insecure: serve static files with DEBUG off too.
            Child(
                "web", [python, manage, "runserver", f"{options['host']}:{options['port']}", "--noreload", "--insecure"]
            ),
            # The models: the web app forwards generate calls and /v1/ to it (PROSPECT_SERVING_URL).
            Child(
                "serving",
                [python, manage, "serve_models", "--host", options["host"], "--port", str(options["serving_port"])],
            ),
            Child(
                "worker-default",
                celery + ["worker", "-Q", "default", "-P", "solo", "-c", "1", "-n", "default@%h", "--loglevel", "INFO"],
            ),
            # The GPU worker: one task at a time, prefetch 1 (late ack is set in settings).
            Child(
                "worker-gpu",
                celery
                + [
                    "worker",
                    "-Q",
                    "gpu",
                    "-P",
                    "solo",
                    "-c",
                    "1",
                    "--prefetch-multiplier",
                    "1",
                    "-n",
                    "gpu@%h",
                    "--loglevel",
                    "INFO",
                ],
            ),
            Child(
                "beat",
                celery
                + ["beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile=", "--loglevel", "INFO"],
            ),
        ]
        if options["simulate"]:
            children.append(
                Child(
                    "simulate",
                    [python, manage, "simulate_annotators", "--rounds", str(options["simulate_rounds"]), "--worker"],
                    may_finish=True,
                )
            )
        return children

    def child_env(self, options) -> dict[str, str]:
        env = dict(os.environ)
        host = options["host"] if ":" not in options["host"] else f"[{options['host']}]"
        env["PROSPECT_SERVING_URL"] = f"http://{host}:{options['serving_port']}"
        env["PROSPECT_DATA_DIR"] = str(settings.DATA_DIR)
        env["PROSPECT_INSTALLATION_ID"] = settings.PROSPECT_INSTALLATION_ID
        # Every child must use the broker chosen here, even if Redis comes or goes meanwhile.
        env["CELERY_BROKER_URL"] = celery_app.conf.broker_url
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        return env

    def start(self, child: Child, env: dict[str, str]) -> None:
        # Own session: Ctrl-C reaches only this supervisor, which then stops the children in order,
        # and a child's own subprocesses die with its process group.
        child.process = subprocess.Popen(
            child.argv,
            cwd=settings.BASE_DIR,
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        child.reader = threading.Thread(target=self._relay_output, args=(child,), daemon=True)
        child.reader.start()
        self.say(f"started {child.name} pid={child.process.pid}")

    def _relay_output(self, child: Child) -> None:
        for line in child.process.stdout:
            self.say(f"[{child.name}] {line.rstrip()}")

    def wait_for_web(self, base_url: str, web: Child, timeout: float = 60.0) -> bool:
        """Until the child answers HTTP at base_url (the web's login page, the serving's /healthz)."""
        path = resolve_url(settings.LOGIN_URL) if web.name == "web" else "/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop_requested and web.process.poll() is None:
            try:
                with urllib.request.urlopen(base_url + path, timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answered, whatever the status
            except OSError:
                time.sleep(0.3)
        return False

    def supervise(self, children: list[Child], exit_after: float | None) -> bool:
        """Wait until Ctrl-C, --exit-after, or a child's unexpected exit (then True: failed)."""
        deadline = time.monotonic() + exit_after if exit_after is not None else None
        finished: set[str] = set()
        while not self._stop_requested:
            if deadline is not None and time.monotonic() >= deadline:
                self.say(f"--exit-after {exit_after:g}s reached")
                return False
            for child in children:
                code = child.process.poll()
                if code is None or child.name in finished:
                    continue
                if child.may_finish and code == 0:
                    finished.add(child.name)
                    self.say(f"{child.name} finished")
                    continue
                self.say(f"{child.name} exited unexpectedly with code {code}; stopping everything")
                return True
            time.sleep(SUPERVISE_INTERVAL_SECONDS)
        self.say("stop requested")
        return False

    def stop_all(self, children: list[Child]) -> None:
        # Stop in reverse order: producers of work (simulate, beat) before its consumers and the web.
        running = [child for child in reversed(children) if child.process and child.process.poll() is None]
        for child in running:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop within {STOP_GRACE_SECONDS:g}s; killing it")
                self._signal(child, signal.SIGKILL)
                child.process.wait()
        for child in children:
            if child.process is None:
                continue
            # Whatever the child left in its process group (e.g. a prefork pool) goes too.
            self._signal(child, signal.SIGKILL)
            if child.reader:
                child.reader.join(timeout=2)
            self.say(f"stopped {child.name} pid={child.process.pid} exit={child.process.returncode}")

    @staticmethod
    def _signal(child: Child, sig: int) -> None:
        try:
            os.killpg(child.process.pid, sig)
        except ProcessLookupError:
            pass

    def reap_runs(self) -> None:
        # A run the stopped GPU worker was training is marked failed and its training processes
        # are killed now, rather than looking "running" until the next start.
        reap_orphaned_runs()

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def say(self, message: str) -> None:
        with self._stdout_lock:
            self.stdout.write(message)
            self.stdout.flush()
