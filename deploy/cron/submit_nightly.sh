#!/usr/bin/env bash
# Submit tonight's nightly data-engine run (jobs/nightly.py) to a Ray cluster, once.
#
#   submit_nightly.sh CONFIG.yaml [KEY=VALUE ...]
#
# Safe to call again and again (from cron, by hand, from a Kubernetes CronJob): the Ray
# submission id is the run id, RUN_ID=nightly-<UTC date>, and before submitting the script asks
# the cluster about it (`ray job status`):
#   no such job            -> submit it as RUN_ID
#   PENDING or RUNNING     -> nothing to do, exit 0
#   SUCCEEDED              -> nothing to do, exit 0
#   FAILED or STOPPED      -> look at RUN_ID-retry-1, -retry-2, ... the same way and submit
#                             under the first free one
# A retry keeps `--set run_id=RUN_ID`: the nightly job resumes by its run id (labeling, selection
# and training pick up where the failed attempt stopped), while Ray refuses to reuse a
# submission id, hence the -retry-<n> suffix on the submission id only.
#
# The job is submitted with --no-wait: this script only submits. Follow it with
#   ray job logs --address "$RAY_ADDRESS" --follow <submission id>
#
# CONFIG.yaml is a NightlyConfig (schemas/nightly.py). The repository is uploaded as the job's
# working dir, so a config inside it is passed by its path relative to the repository and
# travels with the upload (unless .gitignore excludes it: Ray honours .gitignore). A config
# outside the repository is passed as given and must exist at that path on the node that runs
# the driver (the head node).
# Extra KEY=VALUE arguments become `--set KEY=VALUE` overrides (run_id is set by this script).
#
# Environment (cron's is nearly empty: see crontab.example):
#   RAY_ADDRESS         required: the cluster's dashboard, e.g. http://ray-head:8265
#   RAY_BIN             the `ray` CLI (default: `ray` on PATH, else <repo>/.venv/bin/ray)
#   STM_LABEL_REPO      the folder uploaded as working dir (default: this script's repository)
#   STM_LABEL_ENV_FILE  a file of VAR=value lines sourced first (default: none), e.g. for
#                       RAY_ADDRESS or RAY_AUTH_MODE=token on a cluster with token auth
#   NIGHTLY_PYTHON      the interpreter on the cluster (default: python)
#   RUN_DATE            the night to run, YYYY-MM-DD (default: today in UTC; for backfills)
#   MAX_RETRIES         retries of a failed night before giving up (default: 5)
#
# Exit codes: 0 submitted or nothing to do; 1 the cluster could not be asked or the submission
# failed, or MAX_RETRIES used up; 2 bad usage.
set -euo pipefail

log() { printf '%s submit_nightly: %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }
die() {
    log "error: $2"
    exit "$1"
}

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    if [[ $# -ge 1 ]]; then exit 0; fi
    exit 2
fi

if [[ -n ${STM_LABEL_ENV_FILE:-} ]]; then
    [[ -r $STM_LABEL_ENV_FILE ]] || die 2 "STM_LABEL_ENV_FILE=$STM_LABEL_ENV_FILE is not readable"
    set -a
    # shellcheck source=/dev/null
    . "$STM_LABEL_ENV_FILE"
    set +a
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_DIR=$(cd "${STM_LABEL_REPO:-$SCRIPT_DIR/../..}" && pwd -P)
[[ -f $REPO_DIR/jobs/nightly.py ]] || die 2 "$REPO_DIR/jobs/nightly.py not found: set STM_LABEL_REPO"
[[ -n ${RAY_ADDRESS:-} ]] || die 2 "set RAY_ADDRESS to the Ray dashboard, e.g. http://ray-head:8265"
if [[ -z ${RAY_BIN:-} ]]; then
    if command -v ray >/dev/null 2>&1; then
        RAY_BIN=ray
    elif [[ -x $REPO_DIR/.venv/bin/ray ]]; then
        RAY_BIN=$REPO_DIR/.venv/bin/ray
    else
        die 2 "no ray CLI on PATH nor in $REPO_DIR/.venv: set RAY_BIN"
    fi
fi
MAX_RETRIES=${MAX_RETRIES:-5}
[[ $MAX_RETRIES =~ ^[0-9]+$ ]] || die 2 "MAX_RETRIES must be a number, got '$MAX_RETRIES'"
RUN_DATE=${RUN_DATE:-$(date -u +%F)}
[[ $RUN_DATE =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || die 2 "RUN_DATE must be YYYY-MM-DD, got '$RUN_DATE'"
RUN_ID=nightly-$RUN_DATE

# The config as the job on the cluster will see it (its cwd is the uploaded repository).
CONFIG=$1
shift
if [[ -f $CONFIG ]]; then
    config_abs=$(cd "$(dirname "$CONFIG")" && pwd -P)/$(basename "$CONFIG")
    if [[ $config_abs == "$REPO_DIR"/* ]]; then
        CONFIG=${config_abs#"$REPO_DIR"/}
    else
        CONFIG=$config_abs
        log "note: $CONFIG is outside $REPO_DIR: it must exist on the Ray head node"
    fi
else
    log "note: $CONFIG is not a file here: passing it as is, it must exist on the Ray head node"
fi

SETS=(--set "run_id=$RUN_ID")
for assignment in "$@"; do
    if [[ $assignment != *=* ]]; then
        die 2 "expected KEY=VALUE overrides, got '$assignment'"
    elif [[ $assignment == run_id=* ]]; then
        die 2 "run_id is set by this script (RUN_DATE picks the night)"
    fi
    SETS+=(--set "$assignment")
done

# `ray job SUBCOMMAND --address ... ARGS...` (the options must come before a submit's `--`)
ray_job() {
    local subcommand=$1
    shift
    "$RAY_BIN" job "$subcommand" --address "$RAY_ADDRESS" --log-style record --log-color false "$@"
}

# Prints PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED or NONE (no such submission id).
job_status() {
    local id=$1 out
    if ! out=$(ray_job status "$id" 2>&1); then
        if [[ $out == *"does not exist"* ]]; then
            echo NONE
            return 0
        fi
        log "cannot ask $RAY_ADDRESS about job $id:"
        printf '%s\n' "$out" >&2
        return 1
    fi
    case $out in
    *"Job '$id' succeeded"*) echo SUCCEEDED ;;
    *"Job '$id' failed"*) echo FAILED ;;
    *"Job '$id' was stopped"*) echo STOPPED ;;
    *)
        if [[ $out =~ "Status for job '$id': "([A-Z]+) ]]; then
            echo "${BASH_REMATCH[1]}"
        else
            log "unexpected answer of 'ray job status $id':"
            printf '%s\n' "$out" >&2
            return 1
        fi
        ;;
    esac
}

submission_id=$RUN_ID
attempt=0
while :; do
    status=$(job_status "$submission_id") || exit 1
    case $status in
    NONE) break ;;
    PENDING | RUNNING)
        log "$submission_id is $status: nothing to do"
        exit 0
        ;;
    SUCCEEDED)
        log "$submission_id succeeded: nothing to do"
        exit 0
        ;;
    FAILED | STOPPED)
        attempt=$((attempt + 1))
        if ((attempt > MAX_RETRIES)); then
            die 1 "$submission_id is $status and $MAX_RETRIES retries are used up: see its logs"
        fi
        log "$submission_id is $status: looking for a retry of run $RUN_ID"
        submission_id=$RUN_ID-retry-$attempt
        ;;
    *) die 1 "job $submission_id has an unknown status '$status'" ;;
    esac
done

log "submitting $submission_id (run $RUN_ID, config $CONFIG) to $RAY_ADDRESS"
ray_job submit \
    --submission-id "$submission_id" \
    --working-dir "$REPO_DIR" \
    --metadata-json "{\"nightly_run_id\": \"$RUN_ID\"}" \
    --no-wait \
    -- "${NIGHTLY_PYTHON:-python}" jobs/nightly.py --config "$CONFIG" "${SETS[@]}"
log "submitted $submission_id; follow it with: $RAY_BIN job logs --address $RAY_ADDRESS --follow $submission_id"
