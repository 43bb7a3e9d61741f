#!/bin/bash
# usage: threads.sh PID -> prints per-thread utime+stime ticks
for t in /proc/$1/task/*; do echo "$(basename $t) $(cat $t/comm) $(awk '{print $14+$15}' $t/stat)"; done
