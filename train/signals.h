// Stop requests from the batch system: SIGTERM (Slurm sends it at the time limit, after `--signal` lead time, or
// on scancel) and SIGUSR1 (the conventional "checkpoint and requeue" signal: `#SBATCH --signal=USR1@300`).
//
// The handlers only record the signal (async-signal-safe: one volatile sig_atomic_t store). The training loop
// polls signals_stop_requested() once per step; when it is set, the loop finishes the current step, writes a
// checkpoint and exits with SIGNALS_EXIT_REQUEUE, which the Slurm scripts treat as "requeue me"
// (`scontrol requeue $SLURM_JOB_ID` when the exit status is 75). A second signal while saving changes nothing:
// the save completes (a SIGKILL after Slurm's KillWait is covered by the crash-safe checkpoint protocol).
//
// In a multi-process run the batch system signals every process, but not at the same instant: the loop must agree
// on stopping collectively (e.g. an all-reduce of the flag at the step boundary) so that every rank saves the same
// step.
#ifndef SIGNALS_H
#define SIGNALS_H

// EX_TEMPFAIL from <sysexits.h>: "temporary failure, try again". Distinct from 0 (done), 1 (error) and 3 (the
// trainer's non-finite stop), and from 128 + n (killed by signal n).
#define SIGNALS_EXIT_REQUEUE 75

// Installs the SIGTERM and SIGUSR1 handlers (SA_RESTART, so that interrupted I/O resumes) and clears the flag.
void signals_install(void);
// Restores the default dispositions.
void signals_uninstall(void);
// The signal that requested a stop (SIGTERM or SIGUSR1), or 0.
int signals_stop_requested(void);
// "SIGTERM", "SIGUSR1" or "none".
const char *signals_name(int sig);
// Clears the flag (after the stop was handled, or in tests).
void signals_clear(void);

#endif
