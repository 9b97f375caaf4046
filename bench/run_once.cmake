# Runs one benchmark program once at the smallest size: -DEXE=<program>. Benchmarks registered
# through flatmin_bench::grid are named .../N:<n>/..., and FLATMIN_BENCH_MAX_N (set by the ctest
# entry) already caps their grid at N = 10^4; a program whose names carry no N: is run whole with
# --benchmark_min_time=0 instead. Fails if the program fails or if any benchmark reports an error
# (Google Benchmark prints "ERROR OCCURRED" and still exits 0).
set(args --benchmark_min_time=0 --benchmark_repetitions=1)
execute_process(COMMAND ${EXE} --benchmark_list_tests=true RESULT_VARIABLE rc OUTPUT_VARIABLE names ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXE} --benchmark_list_tests exited with ${rc}: ${err}")
endif()
if(names MATCHES "/N:")
  list(APPEND args --benchmark_filter=/N:10000/)
endif()
execute_process(COMMAND ${EXE} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXE} exited with ${rc}")
endif()
if(out MATCHES "ERROR OCCURRED" OR err MATCHES "ERROR OCCURRED")
  message(FATAL_ERROR "${EXE}: a benchmark reported an error")
endif()
if(NOT out MATCHES "[0-9]+ ns|[0-9]+ us|[0-9]+ ms")
  message(FATAL_ERROR "${EXE}: no benchmark ran")
endif()
