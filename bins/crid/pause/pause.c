/* berth's pause: the process that holds a pod's namespaces open. It does
 * nothing but wait; as PID 1 of a pod that shares its PID namespace it
 * reaps the orphans that land on it, and it ends on SIGINT or SIGTERM.
 * Built static (bins/crid/build.rs) so that its image needs nothing else. */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal) {
	(void)signal;
	_exit(0);
}

static void reap(int signal) {
	(void)signal;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	struct sigaction action;
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		static const char version[] = "berth pause\n";
		return write(1, version, sizeof version - 1) < 0;
	}
	if (getpid() != 1) {
		static const char warning[] = "pause: not PID 1: orphans will not be reaped here\n";
		if (write(2, warning, sizeof warning - 1) < 0) {
		}
	}
	memset(&action, 0, sizeof action);
	action.sa_handler = stop;
	if (sigaction(SIGINT, &action, NULL) < 0 || sigaction(SIGTERM, &action, NULL) < 0)
		return 1;
	action.sa_handler = reap;
	action.sa_flags = SA_NOCLDSTOP;
	if (sigaction(SIGCHLD, &action, NULL) < 0)
		return 2;
	for (;;)
		pause();
}
