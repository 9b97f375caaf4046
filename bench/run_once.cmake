# Runs one benchmark program once at the smallest size: -DEXE=<program>. Fails if the program
# fails or if any benchmark reports an error (Google Benchmark prints "ERROR OCCURRED" and still
# exits 0).
execute_process(COMMAND ${EXE} --benchmark_filter=/N:10000/ --benchmark_min_time=0 --benchmark_repetitions=1
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXE} exited with ${rc}")
endif()
if(out MATCHES "ERROR OCCURRED" OR err MATCHES "ERROR OCCURRED")
  message(FATAL_ERROR "${EXE}: a benchmark reported an error")
endif()
if(NOT out MATCHES "N:10000/")
  message(FATAL_ERROR "${EXE}: no benchmark ran at N = 10^4")
endif()
