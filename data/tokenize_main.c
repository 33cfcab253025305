#include "train/check.h"
int main(void) { die("not yet implemented"); }
