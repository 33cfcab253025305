// build/train: the one binary. Subcommands are filled in as the subsystems land.
#include "train/check.h"
#include "train/config.h"
#include <string.h>

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    die("not yet implemented");
}
