# The module layering, enforced by the build: kernels <- runtime <- blockzoo <- scheduler <-
# server. A module's targets see their own headers and those of the modules they link, no more:
# each module's headers are exposed through an include tree of its own (build/include/<module>,
# holding only a link to the module's folder), never the source root. A header included from a
# module above (or from tests/) fails to compile. Tests and benchmarks sit on top and see all.
function(bs_module target module)
  set(root ${CMAKE_BINARY_DIR}/include/${module})
  if(NOT EXISTS ${root}/${module})
    file(MAKE_DIRECTORY ${root})
    file(CREATE_LINK ${CMAKE_SOURCE_DIR}/${module} ${root}/${module} SYMBOLIC)
  endif()
  target_include_directories(${target} PUBLIC ${root})
endfunction()
