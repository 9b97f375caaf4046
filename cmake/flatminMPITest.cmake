# ctest tests run under mpiexec on one machine (loopback), for tests/mpi, examples and bench: one
# place for how they are launched.
#
#   flatmin_add_mpi_test(<name> <ranks> <timeout seconds> <target> [args...])
#
# Open MPI refuses more ranks than cores unless given --oversubscribe (detected once from
# `mpiexec --version`), and root (a CI container) unless told through its environment. One thread
# per rank: the ranks share the machine's cores (the summation is thread-count invariant anyway).
# Under AddressSanitizer, Open MPI's own allocations kept until exit are suppressed
# (tests/mpi/lsan.supp; full unwinding, as Open MPI has no frame pointers, so that its frames are
# seen), and its components stay loaded so that their frames can be named.
include_guard(GLOBAL)

function(flatmin_add_mpi_test name ranks timeout target)
  if(NOT DEFINED FLATMIN_MPIEXEC_EXTRA_FLAGS)
    execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE version ERROR_QUIET
                    RESULT_VARIABLE rc)
    set(flags "")
    if(version MATCHES "Open MPI|OpenRTE")
      set(flags --oversubscribe)
    endif()
    set(FLATMIN_MPIEXEC_EXTRA_FLAGS "${flags}" CACHE INTERNAL "flags mpiexec needs on one machine")
  endif()
  add_test(NAME ${name}
           COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ranks} ${FLATMIN_MPIEXEC_EXTRA_FLAGS}
                   ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${target}> ${ARGN} ${MPIEXEC_POSTFLAGS})
  set_tests_properties(${name} PROPERTIES TIMEOUT ${timeout} PROCESSORS ${ranks}
                       ENVIRONMENT "OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;\
OMPI_MCA_mca_base_component_disable_dlclose=1;\
LSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/tests/mpi/lsan.supp:fast_unwind_on_malloc=0")
endfunction()
