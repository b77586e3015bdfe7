# One Catch2 (v2) executable per layer: tests/<layer>/*.cpp plus the shared main in tests/support.
# Each test file is one CTest entry (selected by Catch's filename tag "[#stem]"), so `ctest -j`
# runs files in parallel. Test cases tagged [cuda] get their own entry per file; without a GPU
# that entry exits 77 with the reason and CTest reports it as skipped, never as passed.
find_package(Catch2 2 REQUIRED)
enable_testing()

set(LRSA_TEST_LAYER_DEPS_core lrsa_runtime)
set(LRSA_TEST_LAYER_DEPS_ops lrsa_runtime)
set(LRSA_TEST_LAYER_DEPS_attn lrsa_attn)
set(LRSA_TEST_LAYER_DEPS_data lrsa_data)
set(LRSA_TEST_LAYER_DEPS_model lrsa_model)
set(LRSA_TEST_LAYER_DEPS_train lrsa_train)
set(LRSA_TEST_LAYER_DEPS_infer lrsa_infer)
set(LRSA_TEST_LAYER_DEPS_dist lrsa_train)

file(GLOB LRSA_TEST_SUPPORT CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/support/*.cpp)
foreach(layer core ops attn data model train dist infer)
  file(GLOB test_files CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/${layer}/*.cpp)
  if(NOT test_files)
    continue()
  endif()
  set(exe lrsa-tests-${layer})
  add_executable(${exe} ${LRSA_TEST_SUPPORT} ${test_files})
  target_include_directories(${exe} PRIVATE ${PROJECT_SOURCE_DIR}/tests ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${exe} PRIVATE ${LRSA_TEST_LAYER_DEPS_${layer}} Catch2::Catch2)
  target_compile_definitions(${exe} PRIVATE
    LRSA_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    LRSA_SHARED_DIR="${PROJECT_SOURCE_DIR}/../shared")
  lrsa_target_defaults(${exe})
  if(layer STREQUAL "dist")  # launches the built lrsa-train under mpirun
    target_compile_definitions(${exe} PRIVATE LRSA_TRAIN_BINARY="$<TARGET_FILE:lrsa-train>")
    add_dependencies(${exe} lrsa-train)
  endif()
  foreach(file IN LISTS test_files)
    get_filename_component(stem ${file} NAME_WE)
    add_test(NAME ${layer}/${stem} COMMAND ${exe} "[#${stem}]~[cuda]" "-#" --order lex)
    set_tests_properties(${layer}/${stem} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 1200)
    file(STRINGS ${file} cuda_tags REGEX "\\[cuda\\]")
    if(cuda_tags)
      add_test(NAME ${layer}/${stem}/cuda COMMAND ${exe} "[#${stem}][cuda]" "-#" --order lex)
      set_tests_properties(${layer}/${stem}/cuda PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 1200)
    endif()
  endforeach()
endforeach()

# The dev harnesses' checks (CMakeLists.txt, "Dev harnesses").
foreach(source IN LISTS LRSA_DEV_HARNESSES)
  get_filename_component(name ${source} NAME_WE)
  add_test(NAME dev/${name} COMMAND dev-${name} --check)
  set_tests_properties(dev/${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 1200)
endforeach()
